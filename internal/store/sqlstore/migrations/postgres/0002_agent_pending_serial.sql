-- During renewal an agent holds two certificates: the one it used to ask
-- and the one it was just given. The old serial stays valid until the new
-- one is first presented, so a lost renewal response cannot lock it out.
ALTER TABLE agents ADD COLUMN prev_cert_serial TEXT NOT NULL DEFAULT '';
