// Nubo end-to-end test function whose module fails to load (a Lambda init error).
"use strict";

throw new Error("init failed on purpose: missing configuration");
