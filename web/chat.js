// The chat demo's app code (see index.html for the page's ids and the protocol).
// Everything that comes from the network is shown with textContent, never parsed as markup.

import { LhttpClient } from '/sdk/lhttp.js';

const DEFAULT_ROOM = 'chatroom'; // the original demo's room: its clients and `lhttp sub` see ours
const RECENT_MS = 10 * 60 * 1000; // a name stays in "Talking recently" this long after it spoke
// Messages the server still keeps of a room are shown when it is opened (or the page
// reloaded), when the server keeps history for the room's channel; else none are.
const RECENT_MESSAGES = 50;
const MAX_LINES = 500;

const $ = (id) => document.getElementById(id);
const ui = {
  nick: $('nick'),
  room: $('room'),
  status: $('status'),
  messages: $('messages'),
  people: $('people'),
  peopleEmpty: $('people-empty'),
  membersBox: $('members-box'),
  members: $('members'),
  memberCount: $('member-count'),
  input: $('input'),
  send: $('send'),
  composer: $('composer'),
  settings: $('settings'),
};

/** Control characters would break a header line; the SDK refuses them, so they are removed. */
const clean = (text) => text.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
const currentNick = () => clean(ui.nick.value).slice(0, 32) || 'anonymous';
const validRoom = (name) => /^[^\s*>]+$/.test(name);

// ---- name and room -------------------------------------------------------------------------

function remembered(key, fallback) {
  try {
    return localStorage.getItem(key) || fallback;
  } catch {
    return fallback; // storage may be disabled
  }
}

function remember(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    // not remembered across visits; nothing else depends on it
  }
}

ui.nick.value = remembered('lhttp-chat-nick', `guest-${Math.floor(1000 + Math.random() * 9000)}`);
const roomFromUrl = decodeURIComponent(location.hash.slice(1));
let room = validRoom(roomFromUrl) ? roomFromUrl : DEFAULT_ROOM;
ui.room.value = room;

// ---- showing things ------------------------------------------------------------------------

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Appends a line to #messages, keeping the view at the bottom if the reader was there. */
function addLine(line) {
  const list = ui.messages;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(line);
  while (list.children.length > MAX_LINES) list.firstElementChild.remove(); // bounded memory
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// Messages of rooms that keep history have a place (room, epoch, offset): the same message,
// sent again when a room is opened again, is shown once. Bounded like the lines.
const shown = new Set();

function firstTime(message) {
  const offset = message.header('offset');
  const epoch = message.header('epoch');
  if (offset === undefined || epoch === undefined) return true;
  const key = `${message.channel}\n${epoch}\n${offset}`;
  if (shown.has(key)) return false;
  shown.add(key);
  if (shown.size > MAX_LINES) shown.delete(shown.values().next().value);
  return true;
}

/** When the message was sent (its `time` header, set by this page), else now. */
function sentAt(message) {
  const time = Number(message.header('time'));
  return Number.isFinite(time) && time > 0 && time <= Date.now() + 60000 ? new Date(time) : new Date();
}

function showNote(kind, text) {
  addLine(element('li', kind, text));
}

function showChat(message) {
  const nick = clean(message.header('nick') ?? '') || 'anonymous';
  const line = element('li', 'chat');
  line.dataset.nick = nick;
  if (nick === currentNick()) line.classList.add('mine');
  const time = sentAt(message);
  const stamp = element('time', 'time', timeFormat.format(time));
  stamp.dateTime = time.toISOString();
  line.append(element('span', 'nick', nick));
  // Other programs may publish other commands to the room (the CLI, an original client).
  if (message.command !== 'chat') line.append(element('span', 'tag', `[${message.command}]`));
  line.append(stamp, element('span', 'text', message.text));
  addLine(line);
  sawTalking(nick, time.getTime());
}

// ---- who is talking ------------------------------------------------------------------------

const lastSeen = new Map(); // nick -> time of their last message in this room

function sawTalking(nick, at) {
  if (at < (lastSeen.get(nick) ?? 0)) return;
  lastSeen.delete(nick); // re-inserted last: the Map stays ordered by recency
  lastSeen.set(nick, at);
  renderPeople();
}

function ago(ms) {
  const minutes = Math.floor(ms / 60000);
  return minutes < 1 ? 'now' : `${minutes} min ago`;
}

function renderPeople() {
  const now = Date.now();
  for (const [nick, at] of lastSeen) if (now - at > RECENT_MS) lastSeen.delete(nick);
  const items = [...lastSeen].reverse().map(([nick, at]) => {
    const item = element('li');
    item.append(element('span', 'who', nick), element('span', 'ago', ago(now - at)));
    return item;
  });
  ui.people.replaceChildren(...items);
  ui.peopleEmpty.hidden = items.length > 0;
}

setInterval(renderPeople, 30000);

// ---- who is in the room (presence) ---------------------------------------------------------

// client id -> the name it joined with. Shown only where the server tracks the room's presence
// (a [[channels]] block with `presence`); kept up to date by `join` and `leave` messages. A
// member is listed with the name it had when it joined the room: a rename shows at its next
// join (a reload, another room), as the server keeps the info of the subscription.
let members = new Map();
let memberTotal = 0;
let me = '';

function renderMembers() {
  const items = [...members].sort((a, b) => a[1].localeCompare(b[1])).map(([id, name]) => {
    const item = element('li', id === me ? 'me' : '', name);
    item.dataset.client = id;
    return item;
  });
  ui.members.replaceChildren(...items);
  ui.memberCount.textContent = `(${memberTotal})`;
}

/** Asks the server who is in `name`; hides the list where the room has no presence. */
async function loadMembers(name) {
  try {
    const answer = await client.presence(name);
    if (name !== room) return;
    me = answer.you;
    members = new Map(answer.members.map((m) => [m.client, clean(m.info) || clean(m.user) || 'anonymous']));
    memberTotal = answer.count;
    ui.membersBox.hidden = false;
    renderMembers();
  } catch {
    if (name === room) ui.membersBox.hidden = true; // no presence here (404), or not allowed
  }
}

/** Applies a `join` or `leave` message of the current room; true when it was one. */
function presenceChange(message) {
  if (message.command !== 'join' && message.command !== 'leave') return false;
  const id = message.header('client');
  if (!id || message.channel !== room || ui.membersBox.hidden) return true;
  if (message.command === 'join' && !members.has(id)) {
    members.set(id, clean(message.text) || clean(message.header('user') ?? '') || 'anonymous');
    memberTotal += 1;
  } else if (message.command === 'leave' && members.delete(id)) {
    memberTotal = Math.max(0, memberTotal - 1);
  }
  renderMembers();
  return true;
}

// ---- connection ----------------------------------------------------------------------------

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
  ui.send.disabled = state !== 'open';
}

const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
const client = new LhttpClient(`${scheme}//${location.host}/`, { reconnectDelay: 500, maxReconnectDelay: 5000 });

function onRoomMessage(message) {
  if (presenceChange(message)) return;
  // Like the original demo: empty bodies are not shown.
  if (message.text !== '' && firstTime(message)) showChat(message);
}

let keepsHistory = false; // the server keeps history for the current room's channel

// Joins, renames and room changes run one after the other, so that an unsubscribe never
// overtakes the subscribe it undoes.
let roomTurn = Promise.resolve();
function inTurn(step) {
  roomTurn = roomTurn.then(step, step);
  return roomTurn;
}

/** Subscribes to `name` again under the current name (for presence lists), quietly. */
async function rejoin(name) {
  if (name !== room) return;
  await client.unsubscribe(name).catch(() => {});
  try {
    await client.subscribe(name, onRoomMessage, { presenceInfo: currentNick() });
    if (!ui.membersBox.hidden) loadMembers(name);
  } catch (error) {
    showNote('error', `Cannot join #${name}: ${error.reason ?? error.message}`);
  }
}

/**
 * Subscribes to `name`, with the recent messages the server keeps of it (which follow the
 * answer); the page is "open" once the server confirmed.
 */
async function join(name) {
  // While disconnected the SDK subscribes on reconnection; the closed state stays visible.
  if (client.state === 'open') setStatus('connecting', `Joining #${name}…`);
  try {
    const answer = await client.subscribe(name, onRoomMessage, { recent: RECENT_MESSAGES, presenceInfo: currentNick() });
    if (name !== room) return; // the person switched rooms meanwhile
    keepsHistory = answer?.header('epoch') !== undefined;
    loadMembers(name);
    setStatus('open', `Connected · #${name}`);
    showNote('system', `You are in #${name}.`);
  } catch (error) {
    showNote('error', `Cannot join #${name}: ${error.reason ?? error.message}`);
    if (name === room && client.state === 'open') setStatus('open', 'Connected · no room');
  }
}

let everOpen = false;
let lost = false; // the loss of the connection was announced and it has not come back yet
client.on('open', () => {
  if (everOpen) setStatus('connecting', `Rejoining #${room}…`);
  else inTurn(() => join(room));
  everOpen = true;
});
// After a reconnection the SDK has subscribed to the room again before this event.
client.on('reconnect', () => {
  lost = false;
  loadMembers(room); // joins and leaves while away were missed
  setStatus('open', `Connected · #${room}`);
  showNote('system', 'Reconnected.');
});
client.on('close', () => {
  if (everOpen && !lost) {
    lost = true;
    // Where the server keeps the room's history, the SDK fetches what was missed when the
    // connection is back (or reports a gap, below).
    showNote('system', keepsHistory
      ? 'Connection lost. Messages sent meanwhile will be shown when it is back.'
      : 'Connection lost. Messages sent until it is back are missed.');
  }
  setStatus('closed', 'Disconnected');
});
client.on('gap', (event) => {
  if (event.channel === room) showNote('system', 'Some messages sent while you were away are no longer kept by the server.');
});
client.on('reconnecting', (event) => {
  setStatus('closed', `Disconnected · retrying in ${Math.max(1, Math.round(event.delay / 1000))} s`);
});
client.on('error', (event) => {
  // Transport errors are shown as the closed state; these come from the server or the room.
  if (event.source === 'server' || event.source === 'handler') {
    showNote('error', `Error: ${event.error.reason ?? event.error.message}`);
  }
});

// ---- sending and settings ------------------------------------------------------------------

ui.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.input.value;
  if (text.trim() === '' || client.state !== 'open') return;
  client.publish(room, text, { command: 'chat', headers: { nick: currentNick(), time: Date.now() } });
  ui.input.value = '';
  ui.input.focus();
});

ui.settings.addEventListener('submit', (event) => event.preventDefault());

ui.nick.addEventListener('change', () => {
  ui.nick.value = currentNick();
  remember('lhttp-chat-nick', ui.nick.value);
  // Presence lists show the name a member subscribed with: subscribe again under the new one.
  if (client.state === 'open') inTurn(() => rejoin(room));
});

ui.room.addEventListener('change', async () => {
  const name = clean(ui.room.value);
  if (!validRoom(name)) {
    showNote('error', 'A room name is one word, without * or >.');
    ui.room.value = room;
    return;
  }
  if (name === room) return;
  const previous = room;
  room = name;
  keepsHistory = false;
  history.replaceState(null, '', name === DEFAULT_ROOM ? location.pathname : `#${encodeURIComponent(name)}`);
  lastSeen.clear();
  renderPeople();
  members = new Map();
  memberTotal = 0;
  renderMembers();
  ui.membersBox.hidden = true;
  await inTurn(async () => {
    await client.unsubscribe(previous).catch(() => {}); // gone when the connection is anyway
    await join(name);
  });
});

renderPeople();
