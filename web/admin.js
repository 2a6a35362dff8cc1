// The lhttpd admin page: reads the server API (/server/info, /server/channels) once a second,
// shows what the server holds, the rates computed from its totals between two reads, and plots
// the last two minutes. The API key, when the server wants one, is asked for once and kept in
// this tab's sessionStorage only (gone when the tab closes).

const POLL_MS = 1000;
const SAMPLES = 120; // two minutes of points
const KEY_STORE = 'lhttpd-admin-key';

const $ = (id) => document.getElementById(id);
const series = { received: [], deliveries: [], connections: [] };
let previous = null; // { at, totals } of the last read
let timer = null;

function key() {
  return sessionStorage.getItem(KEY_STORE);
}

/** A failed API call; `status` 401 means the key is missing or wrong. */
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers ?? {}) };
  if (key()) headers.authorization = `Bearer ${key()}`;
  const response = await fetch(path, { ...options, headers, cache: 'no-store' });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.error ?? `HTTP ${response.status}`);
  return body;
}

function setStatus(state, text) {
  const status = $('status');
  status.dataset.state = state;
  status.textContent = text;
}

const number = new Intl.NumberFormat('en');
function shown(value) {
  if (value >= 10_000_000) return `${(value / 1_000_000).toFixed(1)}M`;
  if (value >= 100_000) return `${(value / 1000).toFixed(0)}k`;
  return number.format(Math.round(value));
}

function duration(secs) {
  const d = Math.floor(secs / 86400);
  const h = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60);
  const s = secs % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function push(series, value) {
  series.push(value);
  if (series.length > SAMPLES) series.shift();
}

function showInfo(info) {
  $('version').textContent = info.version;
  $('node').textContent = info.node ?? 'single node';
  $('uptime').textContent = duration(info.uptime_secs);
  $('draining').textContent = info.draining ? 'yes' : 'no';
  const nats = $('nats');
  if (info.cluster) {
    nats.dataset.state = info.cluster.connected ? 'connected' : 'disconnected';
    nats.textContent = `${info.cluster.connected ? 'connected' : 'disconnected'}, ${info.cluster.subscriptions} subjects`;
  } else {
    nats.dataset.state = 'none';
    nats.textContent = 'not clustered';
  }
  showNodes(info.cluster?.nodes, info.node);
  const now = info.now;
  $('connections').textContent = shown(now.connections);
  $('users').textContent = shown(info.users);
  $('channel-count').textContent = shown(now.channels);
  $('subscriptions').textContent = shown(now.subscriptions);
  $('presence-members').textContent = shown(now.presence_members);
  $('history-channels').textContent = shown(now.history_channels);

  const at = performance.now();
  const totals = info.totals;
  if (previous) {
    const secs = Math.max((at - previous.at) / 1000, 0.001);
    const rate = (name) => Math.max(totals[name] - previous.totals[name], 0) / secs;
    const received = rate('messages_received');
    const deliveries = rate('deliveries');
    $('rate-received').textContent = shown(received);
    $('rate-deliveries').textContent = shown(deliveries);
    $('rate-http').textContent = shown(rate('http_publish_requests'));
    $('rate-sent').textContent = shown(rate('sent_bytes'));
    push(series.received, received);
    push(series.deliveries, deliveries);
  }
  push(series.connections, now.connections);
  previous = { at, totals };
  plot($('plot-messages'), [
    { values: series.received, color: 'received' },
    { values: series.deliveries, color: 'deliveries' },
  ]);
  plot($('plot-connections'), [{ values: series.connections, color: 'received' }]);
}

/** Draws `lines` (each a series of values and a CSS colour variable) on `canvas`, newest right. */
function plot(canvas, lines) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const top = Math.max(1, ...lines.flatMap((line) => line.values));
  const left = 44;
  const bottom = height - 14;
  // Scale: the largest value, and a zero line.
  g.fillStyle = style.getPropertyValue('--muted');
  g.font = '11px system-ui, sans-serif';
  g.fillText(shown(top), 2, 12);
  g.fillText('0', 2, bottom);
  g.strokeStyle = style.getPropertyValue('--line');
  g.beginPath();
  g.moveTo(left, bottom + 0.5);
  g.lineTo(width, bottom + 0.5);
  g.moveTo(left, 4.5);
  g.lineTo(width, 4.5);
  g.stroke();
  g.fillText(`${SAMPLES} s`, left, height - 1);
  const step = (width - left) / (SAMPLES - 1);
  for (const line of lines) {
    const { values } = line;
    g.strokeStyle = style.getPropertyValue(`--${line.color}`);
    g.lineWidth = 2;
    g.beginPath();
    values.forEach((value, i) => {
      const x = left + (SAMPLES - values.length + i) * step;
      const y = bottom - (value / top) * (bottom - 6);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  }
  canvas.dataset.samples = String(Math.max(...lines.map((line) => line.values.length)));
}

/** Deliveries a node reported at its previous status, to show its rate. */
const nodeTotals = new Map();

function showNodes(nodes, self) {
  $('nodes-panel').hidden = !nodes;
  if (!nodes) return;
  const at = performance.now();
  // Nodes that left the list take their totals with them.
  const listed = new Set(nodes.map((node) => node.node));
  for (const id of nodeTotals.keys()) if (!listed.has(id)) nodeTotals.delete(id);
  $('nodes').replaceChildren(
    ...nodes.map((node) => {
      const row = document.createElement('tr');
      row.dataset.node = node.node;
      const before = nodeTotals.get(node.node);
      const rate = before ? Math.max(node.deliveries - before.deliveries, 0) / Math.max((at - before.at) / 1000, 0.001) : 0;
      if (!before || before.deliveries !== node.deliveries) nodeTotals.set(node.node, { deliveries: node.deliveries, at });
      const cells = [
        ['name', node.node === self ? `${node.node} (this node)` : node.node],
        ['connections num', number.format(node.connections)],
        ['subscriptions num', number.format(node.subscriptions)],
        ['rate num', shown(rate)],
        ['uptime num', duration(node.uptime_secs)],
      ];
      row.append(
        ...cells.map(([className, text]) => {
          const cell = document.createElement('td');
          cell.className = className;
          cell.textContent = text; // text, never HTML: a node id comes from the network
          return cell;
        }),
      );
      return row;
    }),
  );
}

function showChannels(listing) {
  const rows = [...listing.channels].sort((a, b) => b.subscribers - a.subscribers || a.channel.localeCompare(b.channel));
  const body = $('channels');
  body.replaceChildren(
    ...rows.map(({ channel, subscribers }) => {
      const row = document.createElement('tr');
      row.dataset.channel = channel;
      const name = document.createElement('td');
      name.className = 'name';
      name.textContent = channel; // text, never HTML: channel names come from clients
      const count = document.createElement('td');
      count.className = 'subscribers num';
      count.textContent = number.format(subscribers);
      row.append(name, count);
      return row;
    }),
  );
  $('channels-note').textContent =
    listing.listed < listing.count ? `${listing.listed} of ${listing.count} channels listed; narrow with a prefix` : '';
}

async function poll() {
  clearTimeout(timer);
  try {
    const prefix = encodeURIComponent($('channel-filter').value.trim());
    const [info, channels] = await Promise.all([api('/server/info'), api(`/server/channels?limit=100&prefix=${prefix}`)]);
    $('login').hidden = true;
    $('dashboard').hidden = false;
    showInfo(info);
    showChannels(channels);
    setStatus('ok', info.draining ? 'draining' : 'live');
  } catch (error) {
    if (error.status === 401) {
      askForKey(key() ? 'that key was refused' : '');
      return; // polling resumes once a key is given
    }
    setStatus('error', error.message || 'server unreachable');
  }
  timer = setTimeout(poll, POLL_MS);
}

function askForKey(problem) {
  sessionStorage.removeItem(KEY_STORE);
  setStatus('login', 'API key needed');
  $('dashboard').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = problem;
  $('key').focus();
}

$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $('key').value);
  $('key').value = '';
  poll();
});

$('channel-filter').addEventListener('input', () => poll());

$('disconnect').addEventListener('click', async () => {
  const user = $('disconnect-user').value.trim();
  const result = $('disconnect-result');
  if (!user) {
    result.textContent = 'give a user id';
    return;
  }
  try {
    const { disconnected, cluster } = await api('/server/disconnect', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user }),
    });
    const here = `${disconnected} connection${disconnected === 1 ? '' : 's'} of ${user} closed`;
    result.textContent = cluster ? `${here} on this node; the other nodes were asked to close theirs` : here;
  } catch (error) {
    result.textContent = `refused: ${error.message}`;
  }
});

poll();
