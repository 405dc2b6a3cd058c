// Talking to the server. URLs stay relative, so the page works unchanged behind a proxy that serves
// the app under a path prefix (the page is then /prefix/ and its requests /prefix/api/...).

/** The server answered, but not with what was asked for: a problem (4xx, 5xx), or a body that is not JSON. */
export class RequestError extends Error {}

/** fetch itself failed: no answer came (the server is down or unreachable, or the connection broke). */
export class NetworkError extends Error {}

/** "Title: detail" from an RFC 9457 problem+json answer, or the HTTP status when the body is not one. */
export async function problemText(response) {
  try {
    const body = await response.json();
    return `${body.title || response.statusText}: ${body.detail || ""}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

/** fetch, or the body read after it, with a network failure (fetch's bare TypeError) told apart from
 *  everything else; an abort stays an abort. */
async function network(start) {
  try {
    return await start();
  } catch (err) {
    if (isAbort(err) || !(err instanceof TypeError)) throw err;
    throw new NetworkError(err.message);
  }
}

async function checked(response) {
  if (!response.ok) throw new RequestError(await problemText(response));
  const text = await network(() => response.text());
  try {
    return JSON.parse(text);
  } catch {
    const type = response.headers.get("content-type") || "no content type";
    throw new RequestError(`the server's answer was not JSON (${response.status}, ${type})`);
  }
}

export async function getJSON(url, signal) {
  return checked(await network(() => fetch(url, { signal })));
}

/** POSTs one image as multipart form data, the way the API's upload endpoints take it. */
export async function postImage(url, blob, name, signal) {
  const form = new FormData();
  form.append("file", blob, name);
  return checked(await network(() => fetch(url, { method: "POST", body: form, signal })));
}

export async function getBlob(url, signal) {
  const response = await network(() => fetch(url, { signal }));
  if (!response.ok) throw new RequestError(await problemText(response));
  return network(() => response.blob());
}

/** A request cancelled because a newer upload superseded it: not an error to show. */
export const isAbort = (err) => err?.name === "AbortError";

/** Says why something failed, in words for the status line: the server's problem, no answer at all,
 *  or a failure in the page itself (a picture that would not decode, a bug), which is logged too. */
export function failureText(err) {
  if (err instanceof RequestError) return err.message;
  if (err instanceof NetworkError) return `the server could not be reached (${err.message})`;
  console.error(err);
  return `could not draw the result (${err?.name ?? "Error"}: ${err?.message ?? err})`;
}
