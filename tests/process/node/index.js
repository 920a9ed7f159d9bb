// Nubo end-to-end test function: plain Lambda handlers run by aws-lambda-ric (Node.js).
// Each handler exercises one behaviour the tests check: a result, a thrown error, an HTTP
// response built from the API Gateway 2.0 event, a timeout and a crash of the process (the
// last two only when the event asks, so the next call on the same function shows recovery).
"use strict";

class HandlerFailed extends Error {
  constructor(message) {
    super(message);
    this.name = "HandlerFailed";
  }
}

// Returns the event, with the request id and function name the runtime saw.
exports.handler = async (event, context) => {
  if (event && typeof event === "object" && "print" in event) {
    console.log(String(event.print));
  }
  return {
    event,
    request_id: context.awsRequestId,
    function_name: context.functionName,
    memory_limit_in_mb: context.memoryLimitInMB,
  };
};

// Throws: the runtime reports it on /error.
exports.fail = async () => {
  throw new HandlerFailed("failing on request");
};

// Answers an API Gateway 2.0 event with a description of that event.
exports.http = async (event) => {
  const raw = event.body
    ? Buffer.from(event.body, event.isBase64Encoded ? "base64" : "utf8")
    : Buffer.alloc(0);
  const query = event.queryStringParameters || {};
  if (query.binary === "1") {
    return {
      statusCode: 200,
      headers: { "content-type": "application/octet-stream" },
      body: raw.toString("base64"),
      isBase64Encoded: true,
    };
  }
  const headers = event.headers || {};
  const picked = {};
  for (const name of ["x-test", "content-type", "cookie"]) {
    if (name in headers) picked[name] = headers[name];
  }
  const description = {
    version: event.version,
    method: event.requestContext.http.method,
    rawPath: event.rawPath,
    rawQueryString: event.rawQueryString,
    query,
    cookies: event.cookies || [],
    headers: picked,
    header_names_lower: Object.keys(headers).every((k) => k === k.toLowerCase()),
    isBase64Encoded: event.isBase64Encoded,
    body: raw.toString("utf8"),
    body_len: raw.length,
  };
  return {
    statusCode: 201,
    headers: { "content-type": "application/json", "x-handler": "node-http" },
    cookies: ["session=node; Path=/", "theme=dark"],
    body: JSON.stringify(description),
    isBase64Encoded: false,
  };
};

// Sleeps for `sleep_s` seconds (none when absent), to run past a timeout on request.
exports.slow = async (event) => {
  const seconds = Number((event && event.sleep_s) || 0);
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  return { slept: seconds };
};

// Kills its own process mid-invocation when the event has `"crash": true`.
exports.crash = async (event) => {
  if (event && event.crash === true) {
    console.log("node: crashing on request");
    process.kill(process.pid, "SIGKILL");
  }
  return { crashed: false };
};
