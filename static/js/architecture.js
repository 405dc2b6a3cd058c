// The network's layout, drawn as SVG from the served model's own description (GET .../architecture).

const SVG = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

const dims = (s) => s.length === 3 ? `${s[0]} ch, ${s[1]}×${s[2]}` : `${s[0]}×${s[1]}`;

/** An SVG of stem, stages, attention modules and head; ``onSelect(name)`` when a module is chosen. */
export function architectureSvg(arch, onSelect) {
  const W = 640, rowH = 34, gap = 10;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} 100`, role: "group", "aria-label": `${arch.name} architecture` });
  svg.append(svgEl("title", {}, `${arch.name}: stem, ${arch.stages.length} stages, head`));
  let y = 4;
  const block = (label, detail) => {
    const g = svgEl("g", { class: "block" });
    g.append(svgEl("rect", { x: 10, y, width: W - 20, height: rowH, rx: 6 }));
    g.append(svgEl("text", { x: 22, y: y + 21 }, label));
    g.append(svgEl("text", { x: W - 22, y: y + 21, "text-anchor": "end" }, detail));
    svg.append(g);
    y += rowH + gap;
  };
  block("Input image", `${arch.input[1]}×${arch.input[2]} RGB`);
  block(`Stem (${arch.stem.kind === "cifar" ? "3×3 conv" : "7×7/2 conv + max-pool"})`, dims(arch.stem.output));
  for (const stage of arch.stages) {
    block(`Stage ${stage.stage}: residual unit${stage.transition_stride > 1 ? " (stride 2)" : ""}`,
          `${stage.channels} ch, ${dims(stage.resolution)}`);
    for (const m of stage.modules) {
      const h = 3 * rowH + 8;
      const g = svgEl("g", { class: "att", tabindex: "0", role: "button", "data-module": m.name,
                             "aria-label": `${m.name}: attention module at ${dims(m.resolution)}; show its mask` });
      g.append(svgEl("rect", { class: "frame", x: 10, y, width: W - 20, height: h, rx: 8 }));
      g.append(svgEl("text", { x: 22, y: y + 18, class: "title" }, `Attention module ${m.name}`));
      g.append(svgEl("text", { x: W - 22, y: y + 18, "text-anchor": "end" }, `H = (1 + M) × T, mask ${dims(m.resolution)}`));
      g.append(svgEl("text", { x: 36, y: y + 42 }, `Trunk T: ${m.trunk_units} residual units at ${dims(m.resolution)}`));
      const levels = m.mask_levels.map((l) => l[0]);
      const path = [...levels, ...levels.slice(0, -1).reverse()].join(" → ");
      g.append(svgEl("text", { x: 36, y: y + 64 }, `Soft mask M: ${path}, then 1×1, 1×1, sigmoid`));
      g.append(svgEl("text", { x: 36, y: y + 86, class: "hint" },
        `${m.mask_depth} max-pool${m.mask_depth > 1 ? "s" : ""} down, bilinear up-sampling back, skip connections`));
      g.addEventListener("click", () => onSelect(m.name));
      g.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onSelect(m.name); }
      });
      svg.append(g);
      y += h + gap;
    }
  }
  block(`Head: ${arch.head.units} residual units`, dims(arch.head.output));
  block("Global average pool + linear", `${arch.classifier.in_features} → ${arch.classifier.classes} classes`);
  svg.setAttribute("viewBox", `0 0 ${W} ${y}`);
  return svg;
}
