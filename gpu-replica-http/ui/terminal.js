// The console's web terminal. The terminal itself is emulated on the server (GET
// /api/v1/replicaSet/{name}/screen); this page draws the screen it is sent (rows of runs of one
// style) and sends keys back as the terminal would. Plain JavaScript, nothing from elsewhere.
"use strict";

// xterm's 16 named colors; 16–231 are a 6×6×6 cube, 232–255 greys, 2^24 + 0xRRGGBB 24-bit.
const PALETTE = ["#000000", "#cd0000", "#00cd00", "#cdcd00", "#0000ee", "#cd00cd", "#00cdcd", "#e5e5e5",
  "#7f7f7f", "#ff0000", "#00ff00", "#ffff00", "#5c5cff", "#ff00ff", "#00ffff", "#ffffff"];
const DEFAULT_FG = "#d8dee4";
const DEFAULT_BG = "#11161c";

function colorOf(n) {
  if (n < 16) return PALETTE[n];
  if (n < 232) {
    const step = (v) => (v === 0 ? 0 : 55 + v * 40);
    const i = n - 16;
    return `rgb(${step(Math.floor(i / 36))},${step(Math.floor(i / 6) % 6)},${step(i % 6)})`;
  }
  if (n < 256) {
    const v = 8 + (n - 232) * 10;
    return `rgb(${v},${v},${v})`;
  }
  const rgb = n - 16777216;
  return `rgb(${(rgb >> 16) & 255},${(rgb >> 8) & 255},${rgb & 255})`;
}

// Cells a character takes: 2 for East Asian wide ones and emoji, else 1.
function cellWidth(ch) {
  const c = ch.codePointAt(0);
  return (c >= 0x1100 && c <= 0x115f) || (c >= 0x2e80 && c <= 0xa4cf) || (c >= 0xac00 && c <= 0xd7a3) ||
    (c >= 0xf900 && c <= 0xfaff) || (c >= 0xfe30 && c <= 0xfe4f) || (c >= 0xff00 && c <= 0xff60) ||
    (c >= 0xffe0 && c <= 0xffe6) || (c >= 0x1f300 && c <= 0x1faff) || (c >= 0x20000 && c <= 0x3fffd) ? 2 : 1;
}

const CSI = "\x1b[";
const SS3 = "\x1bO";
const FUNCTION_KEYS = {
  PageUp: CSI + "5~", PageDown: CSI + "6~", Delete: CSI + "3~", Insert: CSI + "2~",
  F1: SS3 + "P", F2: SS3 + "Q", F3: SS3 + "R", F4: SS3 + "S", F5: CSI + "15~", F6: CSI + "17~",
  F7: CSI + "18~", F8: CSI + "19~", F9: CSI + "20~", F10: CSI + "21~", F11: CSI + "23~", F12: CSI + "24~",
};
const CURSOR_KEYS = { ArrowUp: "A", ArrowDown: "B", ArrowRight: "C", ArrowLeft: "D", Home: "H", End: "F" };

// What the terminal sends for a key press, or null for keys it leaves to the browser.
function keyBytes(event, appCursor) {
  const key = event.key;
  if (event.metaKey || event.isComposing) return null;
  if (event.ctrlKey && event.shiftKey && (key === "C" || key === "V")) return null; // copy, paste
  let out;
  if (key in CURSOR_KEYS) out = (appCursor ? SS3 : CSI) + CURSOR_KEYS[key];
  else if (key in FUNCTION_KEYS) out = FUNCTION_KEYS[key];
  else if (key === "Enter") out = "\r";
  else if (key === "Backspace") out = "\x7f";
  else if (key === "Tab") out = event.shiftKey ? CSI + "Z" : "\t";
  else if (key === "Escape") out = "\x1b";
  else if ([...key].length !== 1) return null; // Shift, Control, Dead, …
  else if (event.ctrlKey && !event.altKey) {
    const code = key.toUpperCase().charCodeAt(0);
    if (code >= 64 && code <= 95) out = String.fromCharCode(code - 64); // ^@ ^A … ^Z ^[ ^\ ^] ^^ ^_
    else if (key === " ") out = "\x00";
    else if (key === "?") out = "\x7f";
    else return null;
  } else out = key;
  // Alt (Meta) sends ESC first; Ctrl+Alt is AltGr on many layouts and types the key itself.
  if (event.altKey && !event.ctrlKey) out = "\x1b" + out;
  return out;
}

// A terminal in `element`, attached to the set `name`'s web terminal session `session` (or a
// new one). `on.session(id)`, `on.state(text)` and `on.exit(code)` tell the page.
class WebTerminal {
  constructor(element, { name, token, session, on }) {
    this.element = element;
    this.name = name;
    this.token = token;
    this.session = session || null;
    this.on = on;
    this.lines = [];
    this.rowNodes = [];
    this.cursor = { row: 0, col: 0, visible: true };
    this.appCursor = false;
    this.bracketedPaste = false;
    this.ended = false;
    this.disposed = false;
    this.encoder = new TextEncoder();
    this.screen = document.createElement("div");
    this.screen.className = "screen";
    element.replaceChildren(this.screen);
    this.listeners = [
      [element, "keydown", (e) => this.key(e)],
      [element, "paste", (e) => this.paste(e)],
      [element, "mousedown", () => element.focus()],
      [element, "focus", () => element.classList.add("focused")],
      [element, "blur", () => element.classList.remove("focused")],
      [window, "resize", () => this.resizeSoon()],
    ];
    for (const [target, kind, handler] of this.listeners) target.addEventListener(kind, handler);
    this.measure();
    this.connect();
    element.focus();
  }

  // The size of one character cell, from a line of them in the terminal's font.
  measure() {
    const row = document.createElement("div");
    row.className = "row";
    const probe = document.createElement("span");
    probe.textContent = "W".repeat(40);
    row.append(probe);
    this.screen.append(row);
    this.cellWidth = probe.getBoundingClientRect().width / 40 || 8;
    this.cellHeight = row.getBoundingClientRect().height || 16;
    row.remove();
  }

  // Rows and columns that fit the element.
  fit() {
    const rows = Math.max(2, Math.floor(this.element.clientHeight / this.cellHeight));
    const cols = Math.max(10, Math.floor(this.element.clientWidth / this.cellWidth));
    return { rows, cols };
  }

  connect() {
    const { rows, cols } = this.fit();
    this.size = { rows, cols };
    const query = new URLSearchParams({ rows: String(rows), cols: String(cols) });
    if (this.session) query.set("session", this.session);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/api/v1/replicaSet/${encodeURIComponent(this.name)}/screen?${query}`;
    const protocols = ["gpu-replica"];
    if (this.token) {
      const hex = Array.from(this.encoder.encode(this.token), (b) => b.toString(16).padStart(2, "0")).join("");
      protocols.push("gpu-replica.bearer." + hex);
    }
    const socket = new WebSocket(url, protocols);
    this.socket = socket;
    let opened = false;
    socket.onopen = () => { opened = true; };
    socket.onmessage = (event) => this.message(JSON.parse(event.data));
    socket.onclose = () => {
      if (this.disposed || this.ended || socket !== this.socket) return;
      if (!opened) {
        this.on.state("could not be opened");
        this.on.failed?.();
        return;
      }
      // A dropped connection: the session lives on the server, attach to it again.
      this.on.state("reconnecting…");
      setTimeout(() => { if (!this.disposed && !this.ended) this.connect(); }, 1000);
    };
  }

  message(message) {
    if (message.type === "session") {
      this.session = message.id;
      this.on.session(message.id);
      this.on.state(message.reattached ? "attached again" : "connected");
      // The window may have changed size while no socket was open.
      this.resizeSoon();
    } else if (message.type === "screen") {
      this.draw(message);
    } else if (message.type === "exit") {
      this.ended = true;
      this.on.exit(message.code);
    }
  }

  draw(update) {
    if (update.full || this.rowNodes.length !== update.rows) {
      this.rowNodes = Array.from({ length: update.rows }, () => {
        const row = document.createElement("div");
        row.className = "row";
        return row;
      });
      this.lines = Array.from({ length: update.rows }, () => []);
      this.screen.replaceChildren(...this.rowNodes);
    }
    const dirty = new Set();
    for (const line of update.lines) {
      this.lines[line.row] = line.runs;
      dirty.add(line.row);
    }
    const before = this.cursor;
    this.cursor = update.cursor;
    dirty.add(before.row);
    dirty.add(update.cursor.row);
    this.appCursor = update.appCursor;
    this.bracketedPaste = update.bracketedPaste;
    this.element.dataset.rows = String(update.rows);
    this.element.dataset.cols = String(update.cols);
    this.element.classList.toggle("alternate", update.alternate);
    if (update.title) this.element.title = update.title;
    for (const row of dirty) if (row < this.rowNodes.length) this.drawRow(row);
  }

  drawRow(row) {
    const runs = this.lines[row] || [];
    const cursor = this.cursor.visible && this.cursor.row === row ? this.cursor.col : -1;
    const spans = [];
    let col = 0;
    for (const run of runs) {
      if (cursor >= col && cursor < col + run.t.length * 2) {
        // Split the run at the cursor's cell.
        let before = "";
        let at = null;
        let after = "";
        let c = col;
        for (const ch of run.t) {
          if (at === null && c + cellWidth(ch) > cursor) at = ch;
          else if (at === null) before += ch;
          else after += ch;
          c += cellWidth(ch);
        }
        if (at !== null) {
          if (before) spans.push(this.span(before, run));
          spans.push(this.span(at, run, true));
          if (after) spans.push(this.span(after, run));
          col = c;
          continue;
        }
      }
      spans.push(this.span(run.t, run));
      for (const ch of run.t) col += cellWidth(ch);
    }
    if (cursor >= col) {
      // The cursor past the last cell drawn (a row narrower than the screen).
      spans.push(this.span(" ".repeat(cursor - col), {}));
      spans.push(this.span(" ", {}, true));
    }
    this.rowNodes[row].replaceChildren(...spans);
  }

  span(text, run, cursor = false) {
    const span = document.createElement("span");
    span.textContent = text;
    const attrs = run.a || 0;
    let fg = run.f === undefined ? null : colorOf(run.f);
    let bg = run.b === undefined ? null : colorOf(run.b);
    if (attrs & 16) [fg, bg] = [bg || DEFAULT_BG, fg || DEFAULT_FG];
    // The cursor's cell takes its colors from the style sheet.
    if (fg && !cursor) span.style.color = fg;
    if (bg && !cursor) span.style.backgroundColor = bg;
    if (attrs & 1) span.style.fontWeight = "bold";
    if (attrs & 2) span.style.opacity = "0.6";
    if (attrs & 4) span.style.fontStyle = "italic";
    if (attrs & 8) span.style.textDecoration = "underline";
    if (cursor) span.className = "cursor";
    return span;
  }

  send(text) {
    if (this.ended || !this.socket || this.socket.readyState !== WebSocket.OPEN) return;
    this.socket.send(this.encoder.encode(text));
  }

  key(event) {
    const bytes = keyBytes(event, this.appCursor);
    if (bytes === null) return;
    event.preventDefault();
    this.send(bytes);
  }

  paste(event) {
    const text = event.clipboardData?.getData("text") || "";
    event.preventDefault();
    const body = text.replace(/\r?\n/g, "\r");
    this.send(this.bracketedPaste ? `${CSI}200~${body}${CSI}201~` : body);
  }

  resizeSoon() {
    clearTimeout(this.resizeTimer);
    this.resizeTimer = setTimeout(() => {
      const size = this.fit();
      if (size.rows === this.size.rows && size.cols === this.size.cols) return;
      this.size = size;
      if (this.socket?.readyState === WebSocket.OPEN) {
        this.socket.send(JSON.stringify({ type: "resize", rows: size.rows, cols: size.cols }));
      }
    }, 100);
  }

  // Ends the program (the session is gone for good).
  close() {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify({ type: "close" }));
  }

  // Leaves the session running on the server, to be attached again.
  dispose() {
    this.disposed = true;
    clearTimeout(this.resizeTimer);
    for (const [target, kind, handler] of this.listeners) target.removeEventListener(kind, handler);
    this.socket?.close();
  }
}
