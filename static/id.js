// The one shape of the server's ids (streams, conversations): 128 bits as 32 lowercase hex
// digits. Whatever the page reads back (sessionStorage, the server's events) is checked here
// before it is used or sent.

const ID = /^[0-9a-f]{32}$/;

/** Whether `value` is an id as the server makes them. */
export function isId(value) {
  return typeof value === "string" && ID.test(value);
}
