// Talking to the server. URLs stay relative, so the page works unchanged behind a proxy that serves
// the app under a path prefix (the page is then /prefix/ and its requests /prefix/api/...).

export class RequestError extends Error {}

/** "Title: detail" from an RFC 9457 problem+json answer, or the HTTP status when the body is not one. */
export async function problemText(response) {
  try {
    const body = await response.json();
    return `${body.title || response.statusText}: ${body.detail || ""}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function checked(response) {
  if (!response.ok) throw new RequestError(await problemText(response));
  return response.json();
}

export async function getJSON(url, signal) {
  return checked(await fetch(url, { signal }));
}

/** POSTs one image as multipart form data, the way the API's upload endpoints take it. */
export async function postImage(url, blob, name, signal) {
  const form = new FormData();
  form.append("file", blob, name);
  return checked(await fetch(url, { method: "POST", body: form, signal }));
}

export async function getBlob(url, signal) {
  const response = await fetch(url, { signal });
  if (!response.ok) throw new RequestError(await problemText(response));
  return response.blob();
}

/** A request cancelled because a newer upload superseded it: not an error to show. */
export const isAbort = (err) => err?.name === "AbortError";

/** Says why a request failed, in words for the status line. */
export function failureText(err) {
  if (err instanceof RequestError) return err.message;
  // fetch rejects with a bare TypeError when the server cannot be reached at all
  return `the server could not be reached (${err.message})`;
}
