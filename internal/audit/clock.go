package audit

import "time"

// timeNow is the record timestamp source (a var so tests can pin it).
var timeNow = time.Now
