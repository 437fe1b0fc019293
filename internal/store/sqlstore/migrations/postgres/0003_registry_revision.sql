-- A counter bumped in the same transaction as every change that can alter
-- what an agent is authorized for (entries, agent records). Every replica
-- polls it (with the bundle sequence) and pushes changes to the agents it
-- serves, so a change made on one replica reaches agents on all of them.
CREATE TABLE registry_meta (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO registry_meta (id, revision) VALUES (1, 0);
