// The page going away and coming back, as the run of a question (run.js) lives through it.
//
// A page cannot tell a reload from a closed tab when it goes away: it sends no cancel and keeps
// the answer in sessionStorage (resume.js); the server's grace decides, and a reloaded page
// continues the answer (app.js, on load). Chrome aborts the stream (an error) before pagehide on
// a reload, so errors from beforeunload on wait to see if the page stays. A page put in the
// back-forward cache closes its stream, and continues the answer if it comes back.

import * as end from "./endings.js";

/** How long after beforeunload a page that is still here is taken to stay. */
const STAY_MS = 1000;

let leaving = null;      // { deferred } from beforeunload until the page is gone (or stays)
let interrupted = null;  // the run whose stream pagehide closed (the page may come back)

/**
 * While the page may be going away, keeps `fn` (the last one given) to run should it stay, and
 * returns true; otherwise returns false and `fn` is not kept.
 */
export function deferWhileLeaving(fn) {
  if (!leaving) return false;
  leaving.deferred = fn;
  return true;
}

/**
 * Follows the page's lifecycle: `current()` is the page's run (or null), `resume(run)` continues
 * a run's stream from its start.
 */
export function watchPage(current, resume) {
  window.addEventListener("beforeunload", () => {
    leaving = { deferred: null };
    const mine = leaving;
    window.setTimeout(() => {
      if (leaving !== mine) return;
      leaving = null;
      if (mine.deferred) mine.deferred();
    }, STAY_MS);
  });

  window.addEventListener("pagehide", () => {
    const r = current();
    if (r && r.isOpen()) {
      r.close();
      interrupted = r;
    }
  });

  // Back from the back-forward cache: continue the answer if the server can, else say it stopped.
  window.addEventListener("pageshow", (ev) => {
    leaving = null;
    const r = interrupted;
    interrupted = null;
    if (!ev.persisted || !r || current() !== r || r.isOpen()) return;
    if (r.stream) resume(r);
    else end.interrupted(r);
  });
}
