# Nubo's Python test guest: answers every request with `hello from python <METHOD> <PATH>`.
# componentize-py builds this module into a wasi:http/proxy component (see build.sh).

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Connect,
    Method_Delete,
    Method_Get,
    Method_Head,
    Method_Options,
    Method_Other,
    Method_Patch,
    Method_Post,
    Method_Put,
    Method_Trace,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Ok

METHOD_NAMES = {
    Method_Get: "GET",
    Method_Head: "HEAD",
    Method_Post: "POST",
    Method_Put: "PUT",
    Method_Delete: "DELETE",
    Method_Connect: "CONNECT",
    Method_Options: "OPTIONS",
    Method_Trace: "TRACE",
    Method_Patch: "PATCH",
}


def method_name(method) -> str:
    if isinstance(method, Method_Other):
        return method.value
    return METHOD_NAMES.get(type(method), "?")


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = method_name(request.method())
        path = request.path_with_query() or "/"
        print(f"python handled {method} {path}")
        text = f"hello from python {method} {path}\n".encode()

        headers = Fields.from_list([("content-type", b"text/plain; charset=utf-8")])
        response = OutgoingResponse(headers)
        response.set_status_code(200)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            # blocking-write-and-flush takes at most 4096 bytes per call.
            for start in range(0, len(text), 4096):
                stream.blocking_write_and_flush(text[start : start + 4096])
        OutgoingBody.finish(body, None)
