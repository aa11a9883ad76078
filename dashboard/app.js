// The RayVault dashboard page. Plain JavaScript, no build step: the daemon
// serves this file as it is. Everything shown comes from the daemon's
// /api routes of this origin and is put in the page as text
// (textContent), never as HTML.
'use strict';

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const STATE_EVERY_MS = 2000;
const LOG_EVERY_MS = 1000;

// The job shown on the right (its "run_id/job_id"), from the address's
// fragment (#job=run_id/job_id) so that a reload keeps it.
let selected = null;
// The shown job's log: where the next read starts, and whether it ended.
let log = { key: null, offset: 0, complete: false, busy: false };
// What the artifact list was last drawn from, so that images and players
// are not rebuilt (and playback not restarted) on every refresh.
let artifactsDrawn = '';
let daemonNow = Date.now();

function $(id) {
  return document.getElementById(id);
}

// A new element with attributes and text or child nodes.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else if (k in e) e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function showMessage(text, isError) {
  const m = $('message');
  m.textContent = text;
  m.className = isError ? 'error' : 'info';
  m.hidden = !text;
}

// Calls the daemon; a 401 (session ended) reloads into the login page.
async function api(path, options) {
  const resp = await fetch(path, Object.assign({ credentials: 'same-origin', cache: 'no-store' }, options || {}));
  if (resp.status === 401) {
    location.reload();
    throw new Error('not logged in');
  }
  const body = await resp.json().catch(() => null);
  if (!resp.ok) {
    throw new Error(body && body.error ? body.error : 'HTTP ' + resp.status);
  }
  return body;
}

function post(path) {
  return api(path, { method: 'POST', headers: { 'X-CSRF-Token': CSRF } });
}

function duration(ms) {
  if (ms === null || ms === undefined) return '';
  if (ms < 1000) return ms + ' ms';
  const s = ms / 1000;
  if (s < 120) return s.toFixed(1) + ' s';
  const m = Math.floor(s / 60);
  return m + ' min ' + Math.round(s - m * 60) + ' s';
}

function ago(ms) {
  if (!ms) return '';
  const s = Math.max(0, Math.round((daemonNow - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  return new Date(ms).toLocaleString();
}

// The time of day of an RFC 3339 UTC timestamp (the date is in its title).
function clock(stamp) {
  const m = /T(\d\d:\d\d:\d\d(\.\d+)?)Z$/.exec(stamp || '');
  return m ? m[1] : (stamp || '');
}

function size(bytes) {
  if (bytes < 1024) return bytes + ' B';
  if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + ' KiB';
  return (bytes / 1024 / 1024).toFixed(1) + ' MiB';
}

function stateBadge(word) {
  return el('span', { class: 'state state-' + (word || 'unknown') }, word || '?');
}

function jobUrl(key, suffix) {
  const [run, job] = key.split('/');
  return '/api/jobs/' + encodeURIComponent(run) + '/' + encodeURIComponent(job) + (suffix || '');
}

// ---- nodes and jobs ----

function drawNodes(state) {
  const body = $('nodes').tBodies[0];
  const rows = [];
  for (const n of state.nodes) {
    const gpu = n.gpu_model ? n.gpu_model + (n.vram_gb ? ' (' + n.vram_gb + ' GB)' : '') : '';
    const steps = Array.isArray(n.steps) ? n.steps.join(', ') : '';
    const canDrain = n.enabled && !['draining', 'drained'].includes(n.status);
    const drain = canDrain ? el('button', { type: 'button', class: 'drain', 'data-node': n.node_id, title: 'Send no new jobs to ' + n.node_id }, 'Drain') : '';
    rows.push(el('tr', { 'data-node': n.node_id },
      el('td', {}, el('strong', {}, n.node_id), el('div', { class: 'muted' }, n.host + ':' + n.port)),
      el('td', { class: 'status' }, stateBadge(n.status), n.reason ? el('div', { class: 'reason' }, n.reason) : null),
      el('td', {}, n.os || ''),
      el('td', {}, n.ram_gb ? n.ram_gb + ' GB' : ''),
      el('td', {}, gpu),
      el('td', { class: 'steps' }, steps),
      el('td', { class: 'load' }, String(n.in_flight)),
      el('td', {}, drain)));
  }
  rows.push(el('tr', { 'data-node': 'local' },
    el('td', {}, el('strong', {}, 'local'), el('div', { class: 'muted' }, 'this controller')),
    el('td', {}, stateBadge('up')), el('td', {}), el('td', {}), el('td', {}), el('td', {}),
    el('td', { class: 'load' }, String(state.local.in_flight)), el('td', {})));
  body.replaceChildren(...rows);
  const note = $('nodes-note');
  note.textContent = state.nodes_error ? state.nodes_error : (state.nodes.length ? '' : 'No workers in ' + state.nodes_file + ': every job runs on this controller.');
  note.hidden = !note.textContent;
}

function drawJobs(state) {
  const body = $('jobs').tBodies[0];
  body.replaceChildren(...state.jobs.map((j) => {
    const where = j.node || (j.phase === 'finished' ? 'nowhere' : '');
    const row = el('tr', { 'data-job': j.key, class: j.key === selected ? 'selected' : '' },
      el('td', {}, el('a', { href: '#job=' + j.key }, j.key), el('div', { class: 'muted' }, j.step_name)),
      el('td', { class: 'state-cell' }, stateBadge(j.state), j.error_code ? el('div', { class: 'reason' }, j.error_code) : null,
        j.phase !== 'finished' && j.last_progress ? el('div', { class: 'muted progress-line', title: j.last_progress }, j.last_progress) : null),
      el('td', {}, where, j.fallback_reason ? el('div', { class: 'reason', title: j.fallback_reason }, 'fallback: ' + j.fallback_reason) : null),
      el('td', {}, ago(j.submitted_at_ms)),
      el('td', { class: 'took' }, duration(j.total_ms)));
    return row;
  }));
  $('jobs-empty').hidden = state.jobs.length > 0;
}

async function refreshState() {
  try {
    const state = await api('/api/state');
    daemonNow = state.daemon.now_ms;
    $('daemon').textContent = 'daemon pid ' + state.daemon.pid;
    $('updated').textContent = 'updated ' + new Date(daemonNow).toLocaleTimeString();
    drawNodes(state);
    drawJobs(state);
  } catch (e) {
    showMessage('Cannot reach the daemon: ' + e.message, true);
  }
}

// ---- one job ----

function fact(list, name, value) {
  if (value === null || value === undefined || value === '') return;
  list.append(el('dt', {}, name), el('dd', { 'data-fact': name }, typeof value === 'object' ? JSON.stringify(value) : String(value)));
}

function drawArtifacts(job) {
  const signature = JSON.stringify(job.files.map((f) => [f.name, f.size]));
  if (signature === artifactsDrawn) return;
  artifactsDrawn = signature;
  const box = $('artifacts');
  const items = job.files.map((f) => {
    const caption = el('figcaption', {}, el('a', { href: f.url, download: f.kind === 'file' ? f.name : null }, f.name), ' ', el('span', { class: 'muted' }, size(f.size)));
    if (f.kind === 'image') return el('figure', { class: 'image' }, el('a', { href: f.url, target: '_blank', rel: 'noopener' }, el('img', { src: f.url, alt: f.name, loading: 'lazy' })), caption);
    if (f.kind === 'audio') return el('figure', { class: 'audio' }, el('audio', { controls: true, preload: 'metadata', src: f.url }), caption);
    if (f.kind === 'video') return el('figure', { class: 'video' }, el('video', { controls: true, preload: 'metadata', src: f.url }), caption);
    return el('figure', { class: 'file' }, caption);
  });
  box.replaceChildren(...items);
  if (!items.length) box.append(el('p', { class: 'muted' }, 'No files yet.'));
}

function drawJob(job) {
  $('job').hidden = false;
  $('job-title').textContent = job.key;
  $('job-state').replaceChildren(stateBadge(job.state));
  $('cancel').hidden = job.phase === 'finished';
  $('cancel').disabled = false;
  const r = job.receipt;
  const facts = $('job-facts');
  facts.replaceChildren();
  fact(facts, 'step', job.step_name);
  fact(facts, 'phase', job.phase);
  fact(facts, 'executed on', r ? (r.executed_on || 'nowhere') : (job.remote ? job.remote.node_id + ' (running)' : null));
  fact(facts, 'remote job', r ? r.remote_job_id : (job.remote ? job.remote.remote_job_id : null));
  fact(facts, 'fallback reason', r ? r.fallback_reason : null);
  fact(facts, 'error', r && r.error ? r.error.code + ': ' + r.error.message : null);
  fact(facts, 'verdict', r ? r.verdict : null);
  fact(facts, 'cached', r && r.cached ? 'yes' : null);
  fact(facts, 'compat mode', r ? r.compat_mode : null);
  fact(facts, 'requirements', Object.keys(job.requirements || {}).length ? job.requirements : null);
  fact(facts, 'inputs hash', r ? r.inputs_hash : null);

  const progress = job.phase === 'finished' ? [] : job.progress;
  $('progress-block').hidden = !progress.length;
  $('progress').replaceChildren(...progress.map((p) => el('li', {}, p)));

  const placement = r ? r.placement : (job.remote ? job.remote.placement : []);
  $('placement').tBodies[0].replaceChildren(...(placement || []).map((p) =>
    el('tr', {}, el('td', {}, p.node_id), el('td', {}, p.eligible ? 'yes' : 'no'), el('td', {}, p.reason))));

  const attempts = r ? r.attempts : [];
  $('attempts').tBodies[0].replaceChildren(...attempts.map((a) =>
    el('tr', {}, el('td', { title: a.remote_job_id || '' }, a.executed_on), el('td', {}, stateBadge(a.outcome)),
      el('td', { class: 'fate' }, a.fate || ''), el('td', {}, a.detail || ''), el('td', { title: a.started_at }, clock(a.started_at)), el('td', { title: a.ended_at }, clock(a.ended_at)))));

  const t = $('timings');
  t.replaceChildren();
  if (r) {
    fact(t, 'submitted', r.timings.submitted_at);
    fact(t, 'queued', duration(r.timings.queue_ms));
    fact(t, 'started', r.timings.started_at);
    fact(t, 'ran', duration(r.timings.run_ms));
    fact(t, 'finished', r.timings.finished_at);
    fact(t, 'synced', duration(r.timings.sync_ms));
    fact(t, 'total', duration(r.timings.total_ms));
  } else {
    fact(t, 'submitted', new Date(job.submitted_at_ms).toISOString() + ' (' + ago(job.submitted_at_ms) + ')');
  }
  drawArtifacts(job);
  $('receipt-json').textContent = r ? JSON.stringify(r, null, 2) : '(written when the job ends)';
}

async function refreshJob() {
  if (!selected) return;
  const key = selected;
  try {
    const job = await api(jobUrl(key));
    if (key !== selected) return;
    drawJob(job);
    if (log.complete === false && job.phase === 'finished') pollLog();
  } catch (e) {
    showMessage('Cannot read ' + key + ': ' + e.message, true);
  }
}

// Appends the next piece of the shown job's log, once a second until the
// daemon says it is complete.
async function pollLog() {
  if (!selected || log.busy || log.complete) return;
  const key = selected;
  log.busy = true;
  try {
    const chunk = await api(jobUrl(key, '/log?offset=' + log.offset));
    if (key !== selected) return;
    const pre = $('log');
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    if (chunk.data) pre.append(chunk.data);
    log.offset = chunk.next_offset;
    log.complete = chunk.complete;
    $('log-source').textContent = chunk.note ? '(' + chunk.note + ')' : (chunk.complete ? '' : '(live, from ' + chunk.source + ')');
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  } catch (e) {
    $('log-source').textContent = '(' + e.message + ')';
  } finally {
    log.busy = false;
  }
}

function selectFromHash() {
  const m = location.hash.match(/^#job=(.+)$/);
  const key = m ? decodeURIComponent(m[1]) : null;
  if (key === selected) return;
  selected = key;
  log = { key: key, offset: 0, complete: false, busy: false };
  artifactsDrawn = '';
  $('log').textContent = '';
  $('artifacts').replaceChildren();
  $('job').hidden = !key;
  for (const row of $('jobs').tBodies[0].rows) row.classList.toggle('selected', row.dataset.job === key);
  refreshJob();
  pollLog();
}

// ---- actions ----

async function cancelSelected() {
  const key = selected;
  $('cancel').disabled = true;
  try {
    await post(jobUrl(key, '/cancel'));
    showMessage('Cancelling ' + key + '…', false);
  } catch (e) {
    showMessage('Cannot cancel ' + key + ': ' + e.message, true);
  }
  refreshJob();
  refreshState();
}

async function drainNode(node) {
  try {
    await post('/api/nodes/' + encodeURIComponent(node) + '/drain');
    showMessage(node + ' is draining: it gets no new jobs; jobs running there finish.', false);
  } catch (e) {
    showMessage('Cannot drain ' + node + ': ' + e.message, true);
  }
  refreshState();
}

async function logout() {
  try {
    await post('/logout');
  } finally {
    location.reload();
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('cancel').addEventListener('click', cancelSelected);
  $('logout').addEventListener('click', logout);
  $('nodes').addEventListener('click', (ev) => {
    const b = ev.target.closest('button.drain');
    if (b) drainNode(b.dataset.node);
  });
  $('jobs').addEventListener('click', (ev) => {
    const row = ev.target.closest('tr[data-job]');
    if (row && !ev.target.closest('a')) location.hash = 'job=' + row.dataset.job;
  });
  window.addEventListener('hashchange', selectFromHash);
  refreshState().then(selectFromHash);
  setInterval(refreshState, STATE_EVERY_MS);
  setInterval(refreshJob, STATE_EVERY_MS);
  setInterval(pollLog, LOG_EVERY_MS);
});
