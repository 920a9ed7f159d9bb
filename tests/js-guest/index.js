// Nubo's JavaScript test guest: answers every request with `hello from js <METHOD> <PATH>`.
// componentize-js attaches this fetch-event listener to wasi:http/incoming-handler.

addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  const text = `hello from js ${event.request.method} ${url.pathname}${url.search}\n`;
  console.log(`js handled ${event.request.method} ${url.pathname}`);
  event.respondWith(
    new Response(text, {
      status: 200,
      headers: { 'content-type': 'text/plain; charset=utf-8' },
    }),
  );
});
