// What a screen reader hears. The answer itself is not a live region (it would be read out in
// fragments as it grows); instead one polite status region says when the answer starts, at most
// a short note every few seconds while it streams, and how it ended; an error is said once, by an
// alert region.

const statusRegion = document.getElementById("announcer");
const alertRegion = document.getElementById("alert");

/** The least time between two progress notes while an answer streams. */
const PROGRESS_EVERY_MS = 10000;

let pending = 0;
let lastNote = 0;

/** Says `text` politely. A fresh text in a later task makes screen readers say even a repeat. */
export function announce(text) {
  if (!statusRegion) return;
  window.clearTimeout(pending);
  statusRegion.textContent = "";
  pending = window.setTimeout(() => {
    statusRegion.textContent = text;
  }, 50);
}

/** The answer started: progress notes count from now. */
export function announceStart(text) {
  lastNote = performance.now();
  announce(text);
}

/** A progress note, unless one was said less than PROGRESS_EVERY_MS ago. */
export function announceProgress(makeText) {
  const now = performance.now();
  if (now - lastNote < PROGRESS_EVERY_MS) return;
  lastNote = now;
  announce(makeText());
}

/** Says an error, once: assertive, through the alert region. */
export function announceError(text) {
  if (!alertRegion) return;
  alertRegion.textContent = "";
  window.setTimeout(() => {
    alertRegion.textContent = text;
  }, 50);
}

/** Before a new question: nothing left over to be read again. */
export function clearAnnouncements() {
  window.clearTimeout(pending);
  if (statusRegion) statusRegion.textContent = "";
  if (alertRegion) alertRegion.textContent = "";
}
