// Live updates: the websocket without the catalogue (/ws?catalogue=none), or polling GET /changes
// while it is down. Every change is passed to the listeners; the view on screen refreshes itself.

import { $ } from "./dom.js";
import { addGenres } from "./catalogue.js";

const POLL_EVERY_MS = 3000, MAX_BACKOFF_MS = 30000;

const net = { seq: null, ws: null, connected: false, backoff: 1000, pollTimer: null, polling: false };
const listeners = new Set();

export function onChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** The newest seq the page has seen (from an ETag, the socket or polling). */
export function noteSeq(seq) {
  if (typeof seq === "number" && (net.seq === null || seq > net.seq)) net.seq = seq;
}

function changed(seq, book) {
  noteSeq(seq);
  for (const fn of listeners) fn(seq, book || null);
}

function setConnection(state) {
  const indicator = $("connection");
  indicator.textContent = state;
  indicator.className = "conn " + state;
}

export function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = net.connected && net.seq !== null ? "?catalogue=none&since=" + net.seq : "?catalogue=none";
  let ws;
  try {
    ws = new WebSocket(scheme + "//" + location.host + "/ws" + query);
  } catch (err) {
    lostSocket();
    return;
  }
  net.ws = ws;
  ws.onopen = () => {
    net.backoff = 1000;
    stopPolling();
    setConnection("live");
  };
  ws.onmessage = (event) => onMessage(JSON.parse(event.data));
  ws.onclose = () => {
    if (net.ws === ws) lostSocket();
  };
}

function onMessage(message) {
  if (message.action === "ready" || message.action === "initial_load") {
    // A server without ?catalogue=none sends the catalogue: only its seq is used.
    if (message.books) addGenres(message.books.map((book) => book.genre));
    const missed = net.seq !== null && message.seq !== net.seq;
    net.connected = true;
    if (missed) changed(message.seq, null);
    else noteSeq(message.seq);
  } else if (typeof message.seq === "number") {
    changed(message.seq, message.book);
  }
}

function lostSocket() {
  net.ws = null;
  startPolling();
  setTimeout(connect, net.backoff); // and try the websocket again, backing off up to 30 s
  net.backoff = Math.min(net.backoff * 2, MAX_BACKOFF_MS);
}

function startPolling() {
  if (net.pollTimer) return;
  setConnection("polling");
  net.pollTimer = setInterval(poll, POLL_EVERY_MS);
  poll();
}

function stopPolling() {
  clearInterval(net.pollTimer);
  net.pollTimer = null;
}

async function poll() {
  if (net.polling || (net.ws && net.ws.readyState === WebSocket.OPEN)) return;
  net.polling = true;
  try {
    await pollOnce();
    if (net.pollTimer) setConnection("polling");
  } catch (err) {
    if (net.pollTimer) setConnection("offline");
  } finally {
    net.polling = false;
  }
}

async function pollOnce() {
  if (net.seq === null) { // start from the newest: the list's ETag usually gave it already
    const health = await fetch("/healthz", { cache: "no-store" });
    noteSeq((await health.json()).seq);
    return;
  }
  const response = await fetch("/changes?since=" + net.seq, { cache: "no-store" });
  if (response.status === 410) { // away too long: everything may have changed
    const health = await fetch("/healthz", { cache: "no-store" });
    changed((await health.json()).seq, null);
    return;
  }
  if (!response.ok) throw new Error("GET /changes answered " + response.status);
  const data = await response.json();
  if (!net.pollTimer) return; // the websocket came back meanwhile
  for (const change of data.changes) changed(change.seq, change.book);
  noteSeq(data.last_seq);
}
