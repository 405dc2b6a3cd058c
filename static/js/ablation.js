// "Attention off": the same image with soft masks zeroed, all at once and one module at a time.

function cell(tag, text, attrs = {}) {
  const el = document.createElement(tag);
  el.textContent = text;
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

const pct = (p) => `${(100 * p).toFixed(1)}%`;

/** The table of the top classes' probabilities in every run, and a sentence on what changed. */
export function ablationTable(a) {
  const columns = [["attention on", a.normal], ["all masks off", a.all_off],
                   ...a.per_module.map((m) => [`${m.module} off`, m])];
  const table = document.createElement("table");
  table.className = "ablation-table";
  table.append(cell("caption", "Probability of the top 5 classes (with attention on) in each run; " +
                               "the bold cell is that run's top class.", { class: "hint" }));
  const head = document.createElement("tr");
  head.append(cell("th", "class", { scope: "col" }), ...columns.map(([title]) => cell("th", title, { scope: "col" })));
  const thead = document.createElement("thead");
  thead.append(head);
  const body = document.createElement("tbody");
  for (const top of a.normal.top) {
    const tr = document.createElement("tr");
    tr.append(cell("th", top.label, { scope: "row" }), ...columns.map(([, run]) =>
      cell("td", pct(run.probabilities[top.index]), run.top[0].index === top.index ? { class: "top" } : {})));
    body.append(tr);
  }
  const last = document.createElement("tr");
  last.append(cell("th", "top class", { scope: "row" }), ...columns.map(([, run]) => cell("td", run.top[0].label)));
  body.append(last);
  table.append(thead, body);
  const changed = columns.slice(1).filter(([, run]) => run.top[0].index !== a.normal.top[0].index).map(([t]) => t);
  const note = cell("p", changed.length ? `The top class changes with: ${changed.join(", ")}.`
                                        : "The top class stays the same in every run; compare the probabilities.");
  return [table, note];
}
