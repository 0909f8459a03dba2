// defectscope review page: a queue of parts (most suspicious first), one large view, keys to decide.
// The server is the source of truth: every decision is POSTed and the page redraws from the
// state the server returns; the state is also re-read every few seconds and when the tab
// regains focus, so two tabs on one folder agree.
"use strict";

const REFRESH_MS = 3000;
const BINS = 30;
const KEYS = {
  g: "good", d: "defective", x: "defective-mask-rejected", s: "skip", u: "clear", Backspace: "clear",
};
const page = { run: null, parts: [], items: new Map(), decisions: {}, summary: null, current: null };

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function decisionOf(part) {
  const entry = page.decisions[part.path];
  return entry ? entry.decision : "";
}

function fmt(value) {
  return value === null || value === undefined ? "none" : Number(value).toPrecision(4);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// The last two components of a path ("crack/000.png"), for the narrow queue.
function shortName(path) {
  return path.split(/[\\/]/).slice(-2).join("/");
}

function buildQueue() {
  const queue = $("queue");
  for (const part of page.parts) {
    const item = element("li", "part");
    item.dataset.path = part.path;
    item.dataset.id = String(part.id);
    item.dataset.decision = "";
    item.title = part.path;
    item.append(element("span", "rank", `#${part.rank}`), element("span", "name", shortName(part.path)), element("span", "score", fmt(part.score)));
    const badges = element("span", "badges");
    badges.append(element("span", `badge ${part.verdict || "none"}`, part.verdict || "no verdict"), element("span", "badge decision", ""));
    item.append(badges);
    item.addEventListener("click", () => select(part));
    queue.append(item);
    page.items.set(part.path, item);
  }
}

function matches(part) {
  const verdict = $("filter-verdict").value;
  const wanted = $("filter-state").value;
  const decision = decisionOf(part);
  if (verdict === "none" ? part.verdict !== null : verdict !== "all" && part.verdict !== verdict) return false;
  if (wanted === "all") return true;
  if (wanted === "undecided") return decision === "";
  if (wanted === "defective") return decision.startsWith("defective");
  return decision === wanted;
}

function visibleParts() {
  return page.parts.filter(matches);
}

function renderQueue() {
  let shown = 0;
  for (const part of page.parts) {
    const item = page.items.get(part.path);
    const decision = decisionOf(part);
    item.dataset.decision = decision;
    const badge = item.querySelector(".badge.decision");
    badge.className = `badge decision ${decision}`;
    badge.textContent = decision ? decision.replace("defective-mask-rejected", "defective, mask wrong") : "";
    badge.hidden = !decision;
    item.hidden = !matches(part);
    item.classList.toggle("current", page.current === part);
    shown += item.hidden ? 0 : 1;
  }
  $("queue-empty").hidden = shown > 0;
}

// "63 anomalous · 2 review · 18 normal": the run's own verdicts, fixed for the session.
function renderVerdictCounts() {
  const counts = page.run.verdict_counts;
  const target = $("verdict-counts");
  if (!counts) { target.replaceChildren(); return; }
  const words = ["anomalous", "review", "normal"];
  const nodes = [];
  words.forEach((word, index) => {
    if (word === "review" && !counts.review && page.run.review_threshold === null) return;
    if (nodes.length) nodes.push(document.createTextNode(" · "));
    nodes.push(element("span", `n-${word}`, `${counts[word]} ${word}`));
  });
  target.replaceChildren(...nodes);
}

function renderSummary() {
  const summary = page.summary;
  if (!summary) return;
  const skipped = summary.counts.skip;
  $("progress").textContent = `${summary.reviewed} of ${summary.total} reviewed` + (skipped ? ` (${skipped} skipped)` : "");
  const settled = summary.review_settled;
  $("overturned").textContent = summary.false_alarms === null
    ? "no verdicts in this run"
    : `overturned: ${summary.false_alarms} false alarm(s), ${summary.misses} miss(es)`
      + (settled ? `; review settled: ${settled.good} good, ${settled.defective} defective` : "");
  const suggested = summary.suggested;
  $("suggested").textContent = suggested
    ? `suggested threshold ${fmt(suggested.threshold)} (${suggested.wrong} on the wrong side)`
    : "suggested threshold: none yet";
  $("suggested").title = suggested ? suggested.rule : "needs a confirmed-good and a confirmed-defective part";
}

function setPicture(img, missing, url) {
  img.hidden = !url;
  if (missing) missing.hidden = Boolean(url);
  if (!url) img.removeAttribute("src");
  else if (img.getAttribute("src") !== url) img.src = url;
}

function renderView() {
  const part = page.current;
  const view = $("view");
  if (!part) {
    view.dataset.currentPath = "";
    $("meta-path").textContent = "no part matches the filters";
    $("meta-figures").replaceChildren();
    for (const id of ["pic-image", "pic-map", "pic-mask-base", "pic-mask"]) setPicture($(id), null, null);
    return;
  }
  view.dataset.currentPath = part.path;
  $("meta-path").textContent = `#${part.rank}  ${part.path}`;
  const decision = decisionOf(part);
  const figures = $("meta-figures");
  figures.replaceChildren(
    element("span", "", `score ${fmt(part.score)}`),
    ...(part.verdict_score !== part.score ? [element("span", "", `verdict score ${fmt(part.verdict_score)}`)] : []),
    element("span", "", `threshold ${fmt(page.run.threshold)}`),
    element("span", `badge ${part.verdict || "none"}`, part.verdict || "no verdict"),
    element("span", `badge ${decision}`, decision || "not reviewed"),
  );
  if (part.label) figures.append(element("span", "badge", `label ${part.label}`));
  setPicture($("pic-image"), null, `/api/image/${part.id}`);
  setPicture($("pic-map"), $("no-map"), part.map ? `/api/map/${part.id}` : null);
  setPicture($("pic-mask-base"), null, part.mask ? `/api/image/${part.id}` : null);
  setPicture($("pic-mask"), $("no-mask"), part.mask ? `/api/mask/${part.id}` : null);
  for (const button of document.querySelectorAll("#actions button[data-action]")) {
    button.classList.toggle("chosen", button.dataset.action === decision);
  }
  const next = neighbour(1);
  if (next) new Image().src = `/api/image/${next.id}`;
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderHistogram() {
  const chart = $("histogram");
  // The threshold is a cut on the verdict score, so the histogram is drawn in its units.
  const scores = page.parts.map((part) => part.verdict_score);
  if (!scores.length) { chart.replaceChildren(); return; }
  const marks = [page.run.threshold, page.summary && page.summary.suggested ? page.summary.suggested.threshold : null];
  const reviewFrom = page.run.review_threshold;
  const known = scores.concat(marks.filter((value) => value !== null), reviewFrom === null ? [] : [reviewFrom]);
  let low = Math.min(...known);
  let high = Math.max(...known);
  if (high === low) { low -= 0.5; high += 0.5; }
  const [left, right, top, bottom] = [40, 630, 16, 120];
  const x = (value) => left + ((value - low) / (high - low)) * (right - left);
  const kinds = ["good", "defective", "skip", "open"];
  const counts = Array.from({ length: BINS }, () => ({ good: 0, defective: 0, skip: 0, open: 0 }));
  for (const part of page.parts) {
    const bin = Math.min(BINS - 1, Math.floor(((part.verdict_score - low) / (high - low)) * BINS));
    const decision = decisionOf(part);
    counts[bin][decision === "" ? "open" : decision.startsWith("defective") ? "defective" : decision] += 1;
  }
  const tallest = Math.max(1, ...counts.map((c) => c.good + c.defective + c.skip + c.open));
  const width = (right - left) / BINS;
  const nodes = [];
  if (reviewFrom !== null && page.run.threshold !== null && reviewFrom < page.run.threshold) {
    // The review band: between its lower edge and the threshold the scores cannot tell.
    const from = x(reviewFrom);
    nodes.push(svg("rect", { x: from, y: top, width: x(page.run.threshold) - from, height: bottom - top, class: "review-band" }));
  }
  nodes.push(svg("line", { x1: left, x2: right, y1: bottom, y2: bottom, stroke: "#9ca3af" }));
  counts.forEach((count, bin) => {
    let y = bottom;
    for (const kind of kinds) {
      const height = (count[kind] / tallest) * (bottom - top);
      if (!height) continue;
      y -= height;
      nodes.push(svg("rect", { x: left + bin * width + 1, y, width: width - 2, height, class: `bar-${kind}` }));
    }
  });
  nodes.push(svg("text", { x: left, y: bottom + 14 }, fmt(low)), svg("text", { x: right, y: bottom + 14, "text-anchor": "end" }, fmt(high)));
  nodes.push(svg("text", { x: 4, y: top + 4 }, String(tallest)), svg("text", { x: (left + right) / 2, y: bottom + 28, "text-anchor": "middle" }, `${page.parts.some((p) => p.verdict_score !== p.score) ? "verdict score" : "score"} (grey: not reviewed, green: good, red: defective, amber: skipped)`));
  if (page.run.threshold !== null) {
    const at = x(page.run.threshold);
    nodes.push(svg("line", { x1: at, x2: at, y1: top - 6, y2: bottom, class: "threshold" }), svg("text", { x: at + 3, y: top - 2 }, `threshold ${fmt(page.run.threshold)}`));
  }
  if (reviewFrom !== null) {
    const at = x(reviewFrom);
    nodes.push(svg("line", { x1: at, x2: at, y1: top, y2: bottom, class: "review-edge" }), svg("text", { x: at - 3, y: top + 28, "text-anchor": "end" }, `review ${fmt(reviewFrom)}`));
  }
  if (marks[1] !== null) {
    const at = x(marks[1]);
    nodes.push(svg("line", { x1: at, x2: at, y1: top + 8, y2: bottom, class: "suggested" }), svg("text", { x: at - 3, y: top + 14, "text-anchor": "end" }, `suggested ${fmt(marks[1])}`));
  }
  if (page.current) {
    const at = x(page.current.verdict_score);
    nodes.push(svg("path", { d: `M${at - 5},${bottom + 7} L${at + 5},${bottom + 7} L${at},${bottom + 1} Z`, class: "cursor" }));
  }
  chart.replaceChildren(...nodes);
}

function render() {
  renderQueue();
  renderSummary();
  renderView();
  renderHistogram();
}

function applyState(state) {
  page.decisions = state.decisions;
  page.summary = state.summary;
  showError("");
  render();
}

function select(part) {
  page.current = part || null;
  render();
  const item = part && page.items.get(part.path);
  if (item) item.scrollIntoView({ block: "nearest" });
}

// The nearest part after (step 1) or before (step -1) the current one that passes the filters.
function neighbour(step) {
  const index = page.current ? page.parts.indexOf(page.current) : -1;
  for (let i = index + step; i >= 0 && i < page.parts.length; i += step) {
    if (matches(page.parts[i])) return page.parts[i];
  }
  return null;
}

async function decide(action) {
  const part = page.current;
  if (!part) return;
  const decision = action === "clear" ? null : action;
  try {
    applyState(await api("/api/decision", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ path: part.path, decision }),
    }));
  } catch (error) {
    showError(`not saved: ${error.message}`);
    return;
  }
  if (decision !== null) select(neighbour(1) || (matches(part) ? part : neighbour(-1)));
}

async function refresh() {
  try {
    applyState(await api("/api/state"));
  } catch (error) {
    showError(error.message);
  }
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target instanceof HTMLSelectElement) return;
  const action = KEYS[event.key];
  if (action) {
    event.preventDefault();
    decide(action);
  } else if (["ArrowDown", "ArrowRight", "j"].includes(event.key)) {
    event.preventDefault();
    const next = neighbour(1);
    if (next) select(next);
  } else if (["ArrowUp", "ArrowLeft", "k"].includes(event.key)) {
    event.preventDefault();
    const previous = neighbour(-1);
    if (previous) select(previous);
  } else if (event.key === "?") {
    $("help").hidden = !$("help").hidden;
  }
}

function onFilter(event) {
  event.target.blur();
  if (!page.current || !matches(page.current)) page.current = visibleParts()[0] || null;
  render();
}

async function start() {
  try {
    page.run = await api("/api/run");
  } catch (error) {
    showError(error.message);
    return;
  }
  page.parts = page.run.parts;
  document.title = `review: ${page.run.title}`;
  $("title").textContent = `review: ${page.run.title}`;
  if (page.run.skipped.length) {
    $("run-skipped").textContent = `${page.run.skipped.length} file(s) were not scored by the run and are not listed.`;
    $("run-skipped").hidden = false;
  }
  buildQueue();
  renderVerdictCounts();
  page.current = page.parts[0] || null;
  document.addEventListener("keydown", onKey);
  for (const button of document.querySelectorAll("#actions button[data-action]")) {
    button.addEventListener("click", () => decide(button.dataset.action));
  }
  $("filter-verdict").addEventListener("change", onFilter);
  $("filter-state").addEventListener("change", onFilter);
  $("help-button").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
  window.addEventListener("focus", refresh);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  setInterval(refresh, REFRESH_MS);
  await refresh();
}

document.addEventListener("DOMContentLoaded", start);
