// Nubo's JavaScript key-value test guest, bound to store `carts`:
//   GET /count         increments `visits` through wasi:keyvalue/atomics, answers the new value
//   PUT /item?key=K    stores the request body under K
//   GET /item?key=K    answers the value under K (404 `absent` when there is none)
// Any other path answers 404; a store error answers 500 with the WIT error's tag and message.

import { open } from 'wasi:keyvalue/store@0.2.0-draft';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft';

const STORE = 'carts';

function text(status, body) {
  return new Response(body, {
    status,
    headers: { 'content-type': 'text/plain; charset=utf-8' },
  });
}

// A `result::err(error)` from an import arrives as a thrown value whose `payload` is the WIT
// variant `{ tag, val }`.
function describe(e) {
  const p = e && e.payload;
  if (p && p.tag) {
    return p.val === undefined ? p.tag : `${p.tag}: ${p.val}`;
  }
  return String(e);
}

async function handle(request) {
  const url = new URL(request.url);
  const key = url.searchParams.get('key');
  if (url.pathname.endsWith('/count') && request.method === 'GET') {
    const bucket = open(STORE);
    const n = increment(bucket, 'visits', 1n);
    return text(200, `${n}`);
  }
  if (url.pathname.endsWith('/item')) {
    if (!key) {
      return text(400, 'missing ?key=');
    }
    if (request.method === 'PUT') {
      const body = new Uint8Array(await request.arrayBuffer());
      open(STORE).set(key, body);
      return text(200, 'ok');
    }
    if (request.method === 'GET') {
      const value = open(STORE).get(key);
      if (value === undefined) {
        return text(404, 'absent');
      }
      return new Response(value, {
        status: 200,
        headers: { 'content-type': 'application/octet-stream' },
      });
    }
    return text(405, 'GET or PUT');
  }
  return text(404, `no route for ${request.method} ${url.pathname}`);
}

addEventListener('fetch', (event) => {
  event.respondWith(
    handle(event.request).catch((e) => {
      console.log(`js-kv error: ${describe(e)}`);
      return text(500, describe(e));
    }),
  );
});
