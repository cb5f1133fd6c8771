// Copying text: the Clipboard API where the page may use it, else the old execCommand way.

function legacyCopy(text) {
  const active = document.activeElement;
  const helper = document.createElement("textarea");
  helper.className = "clipboard-helper";
  helper.setAttribute("readonly", "");
  helper.setAttribute("aria-hidden", "true");
  helper.value = text;
  document.body.appendChild(helper);
  helper.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  helper.remove();
  if (active && typeof active.focus === "function") active.focus();
  return ok;
}

/** Copies `text`; resolves to whether it worked. */
export function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text).then(() => true, () => legacyCopy(text));
  }
  return Promise.resolve(legacyCopy(text));
}
