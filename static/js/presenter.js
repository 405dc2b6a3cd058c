// Presenter mode: one module at a time in big type, moved through with the keyboard.
// Alt+P turns it on and off from anywhere on the page. A modifier, not a bare "P": a single-character
// shortcut would fire from every button and from speech input that types letters (WCAG 2.1.4);
// arrows, Page Up/Down and Esc are not characters, and act only while presenting.

const $ = (id) => document.getElementById(id);
let current = 0;
const listeners = [];

const panels = () => [...$("modules").children];
export const presenting = () => document.body.classList.contains("presenter");
export const currentModule = () => current;

/** Called with the index whenever the current module changes. */
export function onModuleChange(fn) { listeners.push(fn); }

export function setCurrentModule(i) {
  const all = panels();
  if (!all.length) return;
  current = ((i % all.length) + all.length) % all.length;
  all.forEach((el, k) => el.classList.toggle("current", k === current));
  $("presenter-pos").textContent = `module ${current + 1} of ${all.length}`;
  if (presenting()) {
    all[current].querySelector("details.inside").open = true;
    all[current].scrollIntoView({ block: "start" });
  }
  listeners.forEach((fn) => fn(current));
}

export function togglePresenter(on = !presenting()) {
  document.body.classList.toggle("presenter", on);
  $("presenter-toggle").setAttribute("aria-pressed", String(on));
  setCurrentModule(current);
}

/** Wires the buttons and keys; ``ready()`` says whether there is anything to present yet. */
export function installPresenter(ready) {
  $("presenter-toggle").addEventListener("click", () => togglePresenter());
  $("next-module").addEventListener("click", () => setCurrentModule(current + 1));
  $("prev-module").addEventListener("click", () => setCurrentModule(current - 1));
  document.addEventListener("keydown", (e) => {
    // e.code: with Alt, macOS types "π" for the P key
    if (e.altKey && !e.ctrlKey && !e.metaKey && (e.code === "KeyP" || e.key === "p" || e.key === "P")) {
      if (ready()) { togglePresenter(); e.preventDefault(); }
      return;
    }
    if (e.target.closest("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
    const on = presenting();
    if (on && (e.key === "ArrowRight" || e.key === "PageDown")) setCurrentModule(current + 1);
    else if (on && (e.key === "ArrowLeft" || e.key === "PageUp")) setCurrentModule(current - 1);
    else if (on && e.key === "Escape") togglePresenter(false);
    else return;
    e.preventDefault();
  });
}
