// The gateway's notebook page: a client of the gateway's /ws (DESIGN.md sections 6 and 10).
//
// The page is OPEN towards the gateway as soon as it receives kernel-ready; the kernel's
// own connection (the "upstream") is the gateway's, and its state arrives in `upstream`
// frames. Edits are numbered above every seq seen, kept until acknowledged (an ack means
// the kernel has the code), and sent again after this page's socket reconnects.
"use strict";
(() => {
  const STORE = "fsm-gateway.page";        // sessionStorage: this tab's session and cells
  const EDIT_DEBOUNCE_MS = 250;            // typing sends the latest code once it pauses
  const LINK_RETRY = { first: 250, factor: 1.7, max: 5000 };
  const ACTIVITY_MAX = 60;
  const KEEP = 200;                        // requests and upstream states remembered

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const wsBase = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;

  // ---------------------------------------------------------------- state
  const page = {
    sessionId: null,
    ws: null,
    link: "connecting",       // connecting | open | down | replaced
    linkAttempt: 0,
    linkTimer: null,
    linkRetryAt: null,
    ready: false,             // kernel-ready received on the current socket
    seq: 0,                   // highest seq used or seen in a kernel-ready
    maxFrame: 1024 * 1024,
    upstream: null,           // the latest upstream object
    upstreamAt: 0,            // when it arrived (performance.now()), for the countdown
    cells: [],                // {id, code, unsent, sentSeq, ackedSeq, error, el, ...}
    inflight: new Map(),      // seq -> [cell ids] of edit frames sent on this socket
    outbox: [],               // requests waiting for kernel-ready: {op, data}
    requests: new Map(),      // request id -> {op, cellId}
    requestCount: 0,
    history: [],              // upstream states seen, for tests and the activity list
  };
  window.fsmPage = page;

  // ---------------------------------------------------------------- session id
  function randomHex(bytes) {
    const buf = new Uint8Array(bytes);
    crypto.getRandomValues(buf);
    return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function loadStore() {
    try {
      const raw = JSON.parse(sessionStorage.getItem(STORE) || "null");
      if (raw && typeof raw.session === "string" && /^[0-9a-f]{32}$/.test(raw.session)) return raw;
    } catch (_) { /* a damaged store starts a new session */ }
    return null;
  }

  function saveStore() {
    const cells = page.cells.map((c) => [c.id, c.code, isPending(c), c.ackedSeq > 0]);
    try {
      sessionStorage.setItem(STORE, JSON.stringify({ session: page.sessionId, cells }));
    } catch (_) { /* storage full or disabled: the session still works until a reload */ }
  }

  // A duplicated tab copies sessionStorage, so two tabs would share (and keep fencing)
  // one session. Each tab holds a Web Lock named after its session for its whole life; a tab
  // that cannot get it within a moment (a reload's predecessor releases it at once) takes a
  // new session instead.
  async function holdSession(id) {
    if (!navigator.locks) return true;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 1500);
    try {
      return await new Promise((resolve, reject) => {
        navigator.locks.request(`fsm-gateway-session:${id}`, { signal: ctl.signal }, () => {
          clearTimeout(timer);
          resolve(true);
          return new Promise(() => {});  // held until the page goes away
        }).catch(reject);
      });
    } catch (_) {
      return false;
    }
  }

  async function claimSession() {
    const stored = loadStore();
    if (stored && (await holdSession(stored.session))) return stored;
    for (;;) {
      const id = randomHex(16);  // 128 bits: the session id is a capability
      if (await holdSession(id)) return { session: id, cells: [] };
    }
  }

  // ---------------------------------------------------------------- cells
  const isPending = (c) => c.unsent || c.sentSeq > c.ackedSeq;

  function newCellId() {
    return `cell-${randomHex(4)}`;
  }

  function makeCell(id, code) {
    const cell = { id, code, unsent: false, sentSeq: 0, ackedSeq: 0, error: null, timer: null };
    const el = $("cell-template").content.firstElementChild.cloneNode(true);
    cell.el = el;
    cell.editor = el.querySelector("textarea");
    cell.marker = el.querySelector(".marker");
    cell.output = el.querySelector(".output");
    el.dataset.cellId = id;
    cell.editor.dataset.cellId = id;
    el.querySelector(".cell-id").textContent = id;
    cell.editor.value = code;
    cell.editor.placeholder = "Type code here: it reaches the kernel once you Run or Connect.";
    cell.editor.addEventListener("input", () => onType(cell));
    cell.editor.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.shiftKey || ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        run(cell);
      }
    });
    cell.editor.addEventListener("blur", () => sendEdit(cell));
    el.querySelector(".btn-run").addEventListener("click", () => run(cell));
    return cell;
  }

  function addCell(id, code, { focus = false, at = page.cells.length } = {}) {
    const cell = makeCell(id, code);
    page.cells.splice(at, 0, cell);
    const list = $("cells");
    list.insertBefore(cell.el, list.children[at] || null);
    renumber();
    autosize(cell);
    renderMarker(cell);
    if (focus) cell.editor.focus();
    return cell;
  }

  function renumber() {
    page.cells.forEach((c, i) => {
      c.el.querySelector(".cell-index").textContent = `[${i + 1}]`;
      c.editor.setAttribute("aria-label", `Cell ${i + 1} code`);
      c.el.querySelector(".btn-run").setAttribute("aria-label", `Run cell ${i + 1}`);
    });
  }

  function autosize(cell) {
    cell.editor.style.height = "auto";
    cell.editor.style.height = `${cell.editor.scrollHeight + 2}px`;
  }

  const cellById = (id) => page.cells.find((c) => c.id === id);

  function onType(cell) {
    cell.code = cell.editor.value;
    cell.unsent = true;
    cell.error = null;
    autosize(cell);
    clearTimeout(cell.timer);
    cell.timer = setTimeout(() => sendEdit(cell), EDIT_DEBOUNCE_MS);
    renderMarker(cell);
    saveStore();
  }

  function renderMarker(cell) {
    let state;
    let text;
    if (cell.error) {
      state = "error";
      text = `not delivered: ${cell.error}`;
    } else if (cell.unsent) {
      state = "editing";
      text = page.ready ? "editing" : "kept on this page";
    } else if (cell.sentSeq > cell.ackedSeq) {
      state = "waiting";
      text = "not yet with the kernel";
    } else if (cell.ackedSeq) {
      state = "saved";
      text = "with the kernel";
    } else {
      state = "empty";  // not edited on this page: what the session held when it attached
      text = "";
    }
    cell.marker.dataset.state = state;
    cell.marker.textContent = text;
    cell.marker.title = {
      error: `The gateway could not take this edit: ${cell.error}`,
      editing: "Changed here, not yet sent to the gateway",
      waiting: "Sent to the gateway; the kernel has not acknowledged it yet",
      saved: "The kernel has acknowledged this code",
      empty: "",
    }[state];
    cell.el.dataset.pending = String(isPending(cell));
    renderSummary();
  }

  function renderSummary() {
    const n = page.cells.filter(isPending).length;
    const el = $("pending-summary");
    el.hidden = n === 0;
    el.textContent = n === 1 ? "1 cell's edit is not yet with the kernel" : `${n} cells' edits are not yet with the kernel`;
  }

  // ---------------------------------------------------------------- outputs
  function outputText(mimetype, data) {
    if (mimetype === "application/vnd.marimo+error" && Array.isArray(data)) {
      return data.map((e) => {
        if (e && typeof e === "object") {
          const kind = e.exception_type || e.type || "error";
          return e.msg ? `${kind}: ${e.msg}` : String(kind);
        }
        return String(e);
      }).join("\n");
    }
    if (typeof data === "string") {
      if (mimetype === "text/html") {
        // Shown as text: markup from the kernel never runs in this page (it holds the token).
        return new DOMParser().parseFromString(data, "text/html").body.textContent || "";
      }
      if (mimetype === "application/json") {
        try { return JSON.stringify(JSON.parse(data), null, 2); } catch (_) { return data; }
      }
      return data;
    }
    return JSON.stringify(data, null, 2);
  }

  function showOutput(cell, kind, label, text, detail = "") {
    const out = cell.output;
    out.hidden = false;
    out.dataset.kind = kind;
    out.replaceChildren();
    if (label) {
      const l = document.createElement("span");
      l.className = "out-label";
      l.textContent = label;
      out.append(l);
    }
    const pre = document.createElement("pre");
    pre.className = "out-text";
    pre.textContent = text;
    out.append(pre);
    if (detail) {
      const d = document.createElement("details");
      const summary = document.createElement("summary");
      summary.textContent = "details";
      const body = document.createElement("pre");
      body.textContent = detail;
      d.append(summary, body);
      out.append(d);
    }
  }

  // What a failed request means for the person, by the gateway's reason.
  const REQUEST_ADVICE = {
    GAVE_UP: "the connection to the kernel gave up: press Connect, then Run again",
    REJECTED: "the kernel server refused this session: press Connect to ask again",
    SHUTDOWN: "the kernel server shut down: press Connect or Run again",
    USER: "the connection to the kernel was closed: press Connect, then Run again",
    ERROR: "the connection to the kernel stopped on a fault in the gateway: press Connect",
    busy: "too many requests are waiting for the kernel: wait for an answer, then Run again",
    not_connected: "the connection to the kernel was lost before this was sent: Run again",
    refused: "the kernel refused this request",
    shutdown: "the gateway is shutting down",
  };

  function onCellOp(data) {
    if (!data || typeof data.cell_id !== "string") return;
    const cell = cellById(data.cell_id);
    if (!cell) return;
    if (data.status === "queued" || data.status === "running") {
      if (cell.output.dataset.kind !== "result") showOutput(cell, "running", "", `${data.status}…`);
    }
    if (Object.prototype.hasOwnProperty.call(data, "output")) {
      const output = data.output;
      if (output && typeof output === "object" && typeof output.mimetype === "string") {
        const kind = output.mimetype === "application/vnd.marimo+error" ? "error" : "result";
        const text = outputText(output.mimetype, output.data);
        if (text !== "" || kind === "error") showOutput(cell, kind, "output", text);
        else if (cell.output.dataset.kind === "running") cell.output.hidden = true;
      } else if (data.error) {
        showOutput(cell, "error", "error", String(data.error));
      }
    }
    const consoleOut = Array.isArray(data.console) ? data.console : data.console ? [data.console] : [];
    for (const line of consoleOut) {
      if (line && typeof line.data === "string" && line.data) {
        if (cell.output.hidden || cell.output.dataset.kind === "running") showOutput(cell, "result", "output", "");
        const span = document.createElement("pre");
        span.className = "console";
        span.textContent = line.data;
        cell.output.append(span);
      }
    }
  }

  // ---------------------------------------------------------------- sending
  const encoder = new TextEncoder();

  function send(op, data) {
    if (!page.ws || page.ws.readyState !== WebSocket.OPEN) return false;
    page.ws.send(JSON.stringify({ op, data }));
    return true;
  }

  function nextSeq() {
    page.seq += 1;
    return page.seq;
  }

  function sendEdit(cell) {
    clearTimeout(cell.timer);
    cell.timer = null;
    if (!cell.unsent || !page.ready) return;
    const frame = { op: "edit", data: { seq: page.seq + 1, cell_id: cell.id, code: cell.code } };
    const size = encoder.encode(JSON.stringify(frame)).length;
    if (size > page.maxFrame) {
      cell.error = `too large for the gateway (${size} bytes, the limit is ${page.maxFrame})`;
      renderMarker(cell);
      return;
    }
    const seq = nextSeq();
    if (!send("edit", { seq, cell_id: cell.id, code: cell.code })) return;
    cell.unsent = false;
    cell.sentSeq = seq;
    cell.error = null;
    page.inflight.set(seq, [cell.id]);
    renderMarker(cell);
    saveStore();
  }

  function flushEdits() {
    for (const cell of page.cells) if (cell.unsent) sendEdit(cell);
  }

  function request(op, data, cellId) {
    page.requestCount += 1;
    const id = `${op}-${page.requestCount}`;
    page.requests.set(id, { op, cellId });
    // A request that succeeds gets no answer of its own: keep only the newest ones.
    if (page.requests.size > KEEP) page.requests.delete(page.requests.keys().next().value);
    page.outbox.push({ op, data: { ...data, id } });
    drainOutbox();
  }

  function drainOutbox() {
    if (!page.ready) return;
    flushEdits();  // a request after an edit must find the edit on its way first
    while (page.outbox.length) {
      const { op, data } = page.outbox[0];
      if (!send(op, data)) return;
      page.outbox.shift();
    }
  }

  function run(cell) {
    showOutput(cell, "running", "", "waiting for the kernel…");
    // Both shapes in one request: the reference server reads cell_id; marimo's
    // /api/kernel/run reads cellIds and codes (and ignores the keys it does not know).
    request("run", { cell_id: cell.id, cellIds: [cell.id], codes: [cell.code] }, cell.id);
  }

  function connect() {
    note("you pressed Connect");
    request("connect", {}, null);
  }

  // ---------------------------------------------------------------- receiving
  function onKernelReady(data) {
    // Acks owed to an older socket never come: what it carried is sent again below.
    page.inflight.clear();
    page.link = "open";
    page.linkAttempt = 0;
    if (Number.isInteger(data.seq)) page.seq = Math.max(page.seq, data.seq);
    if (Number.isInteger(data.max_frame_size) && data.max_frame_size > 0) page.maxFrame = data.max_frame_size;
    const ids = Array.isArray(data.cell_ids) ? data.cell_ids : [];
    const codes = Array.isArray(data.codes) ? data.codes : [];
    const held = new Map(ids.map((id, i) => [String(id), typeof codes[i] === "string" ? codes[i] : ""]));
    // The session's cells first, in its order; then the cells only this page knows.
    const order = [];
    for (const [id, code] of held) {
      let cell = cellById(id);
      if (!cell) {
        cell = addCell(id, code);
        cell.ackedSeq = 0;
      } else if (!isPending(cell) && cell.code !== code) {
        cell.code = code;  // the session holds newer code (another client, or a reload)
        cell.editor.value = code;
        autosize(cell);
      }
      order.push(cell);
    }
    for (const cell of page.cells) {
      if (held.has(cell.id)) continue;
      // The gateway does not hold this cell: a new session or one it lost. Send it (again).
      if (cell.code) cell.unsent = true;
      order.push(cell);
    }
    for (const cell of page.cells) {
      // Sent on the old socket and never acknowledged: the gateway may not have it.
      if (cell.sentSeq > cell.ackedSeq) cell.unsent = true;
    }
    page.cells = order;
    const list = $("cells");
    order.forEach((cell, i) => {
      // Moved only when out of place: moving an element takes the focus from its editor.
      if (list.children[i] !== cell.el) list.insertBefore(cell.el, list.children[i] || null);
    });
    if (!page.cells.length) addCell(newCellId(), "");
    renumber();
    page.ready = true;
    page.cells.forEach(renderMarker);
    saveStore();
    if (data.upstream) onUpstream(data.upstream);
    note(`attached to session ${page.sessionId.slice(0, 8)}…`);
    renderLink();
    drainOutbox();
    page.cells.forEach(autosize);
  }

  function onAck(data) {
    const ids = page.inflight.get(data.seq);
    if (!ids) return;
    page.inflight.delete(data.seq);
    for (const id of ids) {
      const cell = cellById(id);
      if (!cell) continue;
      cell.ackedSeq = Math.max(cell.ackedSeq, data.seq);
      renderMarker(cell);
    }
    saveStore();
  }

  function onError(data) {
    if (Number.isInteger(data.seq)) {
      for (const id of page.inflight.get(data.seq) || []) {
        const cell = cellById(id);
        if (!cell) continue;
        cell.error = data.message || data.reason || "refused";
        cell.unsent = true;  // sent again with the next edit or reconnect
        renderMarker(cell);
      }
      page.inflight.delete(data.seq);
      return;
    }
    const req = page.requests.get(data.id);
    page.requests.delete(data.id);
    const advice = REQUEST_ADVICE[data.reason] || data.message || "failed";
    if (req && req.cellId) {
      const cell = cellById(req.cellId);
      const detail = advice === data.message ? "" : data.message || "";
      if (cell) showOutput(cell, "error", `could not ${req.op}`, advice, detail);
    }
    note(`${data.op || "request"} failed: ${advice}`);
  }

  function onUpstream(u) {
    if (!u || typeof u !== "object") return;
    const prev = page.upstream;
    page.upstream = u;
    page.upstreamAt = performance.now();
    const key = [u.state, u.phase, u.attempts, u.reason].join("|");
    const prevKey = prev ? [prev.state, prev.phase, prev.attempts, prev.reason].join("|") : "";
    if (key !== prevKey) {
      page.history.push({ state: u.state, phase: u.phase, attempts: u.attempts, reason: u.reason });
      if (page.history.length > KEEP) page.history.shift();
      note(describe(u, u.delay), u.phase || u.state, u.phase || u.state);
    }
    renderUpstream();
  }

  function onFrame(event) {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch (_) {
      return;  // not ours to break on: the gateway only sends JSON
    }
    if (!frame || typeof frame.op !== "string") return;
    const data = frame.data && typeof frame.data === "object" ? frame.data : {};
    switch (frame.op) {
      case "kernel-ready": onKernelReady(data); break;
      case "ack": onAck(data); break;
      case "upstream": onUpstream(data); break;
      case "error": onError(data); break;
      case "cell-op": onCellOp(data); break;
      default: break;  // other kernel messages (marimo's variables, completed-run, ...)
    }
  }

  // ---------------------------------------------------------------- the page's own link
  function openLink() {
    clearTimeout(page.linkTimer);
    page.linkTimer = null;
    page.linkRetryAt = null;
    page.link = "connecting";
    page.ready = false;
    renderLink();
    const query = new URLSearchParams({ session_id: page.sessionId });
    if (token) query.set("token", token);
    const ws = new WebSocket(`${wsBase}?${query}`);
    page.ws = ws;
    ws.addEventListener("message", (ev) => { if (page.ws === ws) onFrame(ev); });
    ws.addEventListener("close", (ev) => { if (page.ws === ws) onLinkClosed(ev); });
  }

  function onLinkClosed(ev) {
    page.ws = null;
    page.ready = false;
    page.inflight.clear();
    if (ev.code === 1008 && ev.reason === "replaced") {
      // Another tab or window took this session: reconnecting would take it back and forth.
      page.link = "replaced";
      note("this session was opened elsewhere");
      renderLink();
      return;
    }
    page.link = "down";
    const delay = Math.min(LINK_RETRY.max, LINK_RETRY.first * LINK_RETRY.factor ** page.linkAttempt);
    page.linkAttempt += 1;
    page.linkRetryAt = performance.now() + delay * (0.8 + 0.2 * Math.random());
    page.linkTimer = setTimeout(openLink, page.linkRetryAt - performance.now());
    if (page.linkAttempt === 1) note(`lost the gateway (${ev.code}${ev.reason ? ` ${ev.reason}` : ""}); reconnecting`);
    page.cells.forEach(renderMarker);
    renderLink();
  }

  // ---------------------------------------------------------------- rendering
  const fmt = (s) => (s >= 10 ? s.toFixed(0) : s.toFixed(1));

  function remaining(u) {
    if (typeof u.delay !== "number") return null;
    return Math.max(0, u.delay - (performance.now() - page.upstreamAt) / 1000);
  }

  function describe(u, left) {
    const max = u.max_attempts;
    const of = Number.isInteger(max) ? ` of ${max}` : "";
    switch (u.state) {
      case "NOT_STARTED":
        return "not started: edit freely; the kernel starts on your first Run or Connect";
      case "CONNECTING":
        if (u.phase === "BACKING_OFF") {
          const next = left == null ? "" : left > 0 ? `, next try in ${fmt(left)} s` : ", trying again now";
          return `reconnecting: attempt ${u.attempts}${of} failed${next}`;
        }
        return `connecting: attempt ${(u.attempts || 0) + 1}${of}`;
      case "OPEN":
        return "open: the kernel is ready; edits go straight to it";
      case "CLOSING":
        return "closing the connection to the kernel";
      case "CLOSED":
        switch (u.reason) {
          case "GAVE_UP": return `gave up after ${u.attempts || max} attempts: press Connect`;
          case "REJECTED": return "the kernel server refused this session: press Connect to ask again";
          case "SHUTDOWN": return "the kernel server shut down: press Connect or Run to start again";
          case "USER": return "closed: press Connect to start again";
          case "ERROR": return "stopped on a fault in the gateway (its log says which): press Connect";
          default: return `closed${u.reason ? ` (${u.reason})` : ""}: press Connect`;
        }
      default:
        return String(u.state);
    }
  }

  function connectLabel(u) {
    if (!u) return null;
    if (u.state === "NOT_STARTED") return "Connect";
    if (u.state === "CONNECTING" && u.phase === "BACKING_OFF") return "Retry now";
    if (u.state === "CLOSED") return "Connect";
    return null;
  }

  let connectButton = null;

  function renderConnect() {
    const label = connectLabel(page.upstream);
    const slot = $("connect-slot");
    if (!label) {
      if (connectButton) connectButton.remove();
      connectButton = null;
      return;
    }
    if (!connectButton) {
      connectButton = document.createElement("button");
      connectButton.type = "button";
      connectButton.className = "btn btn-primary";
      connectButton.dataset.testid = "connect";
      connectButton.addEventListener("click", connect);
      slot.append(connectButton);
    }
    connectButton.textContent = label;
    connectButton.disabled = !page.ready;
    connectButton.title = page.ready ? "" : "waiting for this page's link to the gateway";
  }

  function renderUpstream() {
    const u = page.upstream;
    const status = $("status");
    const state = u ? String(u.state) : "UNKNOWN";
    const shown = u && u.state === "CONNECTING" && u.phase ? u.phase : state;
    for (const el of [status, $("kernel-link")]) {
      el.dataset.state = shown;
      if (u && u.reason) el.dataset.reason = u.reason; else delete el.dataset.reason;
    }
    $("upstream-state").textContent = u ? state : "…";
    document.title = u ? `${u.phase || u.reason || state} · fsm notebook` : "fsm notebook";
    const sub = u && (u.phase || u.reason);
    $("upstream-phase").hidden = !sub;
    $("upstream-phase").textContent = sub || "";
    $("kernel-link-text").textContent = u ? (u.phase || u.reason ? `${state} · ${u.phase || u.reason}` : state) : "…";
    $("upstream-words").textContent = u ? describe(u, remaining(u)) : "waiting for the gateway…";
    const bar = $("attempts");
    const showBar = u && u.state === "CONNECTING" && Number.isInteger(u.max_attempts) && u.max_attempts > 0;
    bar.hidden = !showBar;
    if (showBar) $("attempts-bar").style.width = `${Math.min(100, (100 * (u.attempts || 0)) / u.max_attempts)}%`;
    renderConnect();
    highlight(shown, state);
  }

  // The diagram's node for a state (CONNECTING shows its phase's node), as Graphviz titles it.
  let lastNode = null;

  // Graphviz titles an edge "tail->head", and draws some transitions reversed (dir=back) or
  // to the compound CONNECTING's anchor nodes; an upstream frame names no event. So the
  // edge taken is looked up by these titles in turn, and shown only when one edge matches.
  function edgeCandidates(from, to) {
    const inConnecting = (n) => n === "dialing" || n === "backing_off";
    const titles = [`${from}->${to}`, `${to}->${from}`];
    if (inConnecting(to) && !inConnecting(from)) {
      titles.push(`${from}->connecting_anchor_in`, `connecting_anchor_in->${from}`);
    }
    if (inConnecting(from) && !inConnecting(to)) titles.push(`connecting_anchor_out->${to}`);
    return titles;
  }

  function takenEdge(edges, from, to) {
    for (const title of edgeCandidates(from, to)) {
      const found = edges.filter((e) => e.title === title);
      if (found.length) return found.length === 1 ? found[0].g : null;
    }
    return null;
  }

  function highlight(shown, state) {
    const node = shown.toLowerCase();
    if (lastNode !== node) {
      for (const svg of document.querySelectorAll(".diagram svg")) {
        const edges = [...svg.querySelectorAll("g.edge")].map((g) => ({
          g, title: (g.querySelector(":scope > title")?.textContent || "").trim().toLowerCase(),
        }));
        const taken = lastNode ? takenEdge(edges, lastNode, node) : null;
        for (const { g } of edges) {
          g.classList.toggle("taken", g === taken);
          if (g === taken) g.setAttribute("data-state", shown); else g.removeAttribute("data-state");
        }
      }
      lastNode = node;
    }
    const want = new Set([node]);
    for (const g of document.querySelectorAll(".diagram svg g.node, .diagram svg g.cluster")) {
      const title = (g.querySelector(":scope > title")?.textContent || "").trim().toLowerCase();
      const current = g.classList.contains("node") && want.has(title);
      g.classList.toggle("current", current);
      g.classList.toggle("current-cluster", g.classList.contains("cluster") && title === `cluster_${state.toLowerCase()}`);
      if (current || g.classList.contains("current-cluster")) {
        g.setAttribute("data-state", g.classList.contains("node") ? shown : state);
      } else {
        g.removeAttribute("data-state");
      }
    }
  }

  // The page's banner about its own link: built once per kind, so that re-rendering
  // every second (the retry countdown) keeps its button under the pointer.
  function showBanner(kind, html, label, onClick) {
    const banner = $("page-banner");
    banner.hidden = false;
    if (banner.dataset.kind === kind) return;
    banner.dataset.kind = kind;
    const text = document.createElement("span");
    text.innerHTML = html;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "btn";
    button.textContent = label;
    button.addEventListener("click", onClick);
    banner.replaceChildren(text, button);
  }

  function renderLink() {
    const el = $("gateway-link");
    el.dataset.link = page.link;
    let words;
    switch (page.link) {
      case "open": words = "connected"; break;
      case "connecting": words = page.linkAttempt ? "reconnecting…" : "connecting…"; break;
      case "replaced": words = "in use in another tab"; break;
      default: {
        const left = page.linkRetryAt == null ? 0 : Math.max(0, (page.linkRetryAt - performance.now()) / 1000);
        words = `lost; retrying in ${fmt(left)} s`;
      }
    }
    $("gateway-link-text").textContent = words;
    $("gateway-link-words").textContent = words;
    if (page.link === "replaced") {
      showBanner("replaced",
        "<strong>This session is open in another tab or window.</strong> Edits here are paused.",
        "Use it here", () => { page.linkAttempt = 0; openLink(); });
    } else if (page.link === "down" && page.linkAttempt > 2) {
      showBanner("down",
        "<strong>This page lost the gateway.</strong> Your edits are kept here and sent when it is back.",
        "Reconnect now", () => { openLink(); });
    } else {
      const banner = $("page-banner");
      banner.hidden = true;
      delete banner.dataset.kind;
    }
    renderConnect();
  }

  function note(text, state, label) {
    const li = document.createElement("li");
    const time = document.createElement("time");
    const now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = now.toTimeString().slice(0, 8);
    const body = document.createElement("span");
    if (label) {
      const s = document.createElement("span");
      s.className = "ev-state";
      s.dataset.state = state;
      s.textContent = label;
      body.append(s, " ");
    }
    body.append(text);
    li.append(time, body);
    const list = $("activity");
    list.prepend(li);
    while (list.children.length > ACTIVITY_MAX) list.lastElementChild.remove();
  }

  // The countdown: only the words change, ten times a second, while something is waiting.
  setInterval(() => {
    const u = page.upstream;
    if (u && u.state === "CONNECTING" && u.phase === "BACKING_OFF") {
      $("upstream-words").textContent = describe(u, remaining(u));
    }
    if (page.link === "down") renderLink();
  }, 100);

  // ---------------------------------------------------------------- start
  async function start() {
    $("gateway-url").textContent = wsBase;
    const dialog = $("diagram-dialog");
    const small = document.querySelector("#diagram svg");
    if (small) $("diagram-large").append(small.cloneNode(true));
    $("enlarge").addEventListener("click", () => dialog.showModal());
    $("add-cell").addEventListener("click", () => {
      const cell = addCell(newCellId(), "", { focus: true });
      saveStore();
      return cell;
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") flushEdits();
    });
    const claimed = await claimSession();
    page.sessionId = claimed.session;
    $("session-id").textContent = page.sessionId;
    // The cells this tab had before a reload are shown at once, editable before the
    // gateway answers; the ones not acknowledged are sent again after kernel-ready.
    for (const [id, code, pending, acked] of claimed.cells || []) {
      if (typeof id !== "string" || typeof code !== "string") continue;
      const cell = addCell(id, code);
      cell.unsent = Boolean(pending);
      // Seqs restart above the session's on kernel-ready; "acknowledged once" is what counts.
      cell.ackedSeq = acked && !pending ? 1 : 0;
      renderMarker(cell);
    }
    saveStore();
    openLink();
  }

  start();
})();
