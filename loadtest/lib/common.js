// Shared by the k6 scenarios: configuration from the environment, the API calls, the summary.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const API_KEY = __ENV.API_KEY || '';
export const VUS = parseInt(__ENV.VUS || '2', 10);
export const DURATION = __ENV.DURATION || '30s';
// Upper bound on iterations (requests stay bounded even if the service is very fast).
export const MAX_ITERATIONS = parseInt(__ENV.MAX_ITERATIONS || '50', 10);
// How long one job may take from upload to done before it counts as failed.
export const JOB_TIMEOUT_S = parseFloat(__ENV.JOB_TIMEOUT_S || '120');
const POLL_INTERVAL_S = parseFloat(__ENV.POLL_INTERVAL_S || '0.5');

// Loopback only: this tool is never pointed at another machine.
if (!/^https?:\/\/(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?(\/|$)/.test(BASE_URL)) {
  throw new Error(`BASE_URL ${BASE_URL} is not a loopback address`);
}

// Clips: comma-separated paths, read once in the init context.
const CLIP_PATHS = (__ENV.CLIPS || '').split(',').filter((path) => path.length > 0);
if (CLIP_PATHS.length === 0) {
  throw new Error('CLIPS (comma-separated audio files) is empty');
}
export const CLIPS = CLIP_PATHS.map((path) => ({
  name: path.split('/').pop(),
  body: open(path, 'b'),
}));

export const uploadsAccepted = new Counter('uploads_accepted');
export const jobsDone = new Counter('jobs_done');
export const jobsFailed = new Counter('jobs_failed');
export const jobSuccess = new Rate('job_success');
export const jobSeconds = new Trend('job_seconds');
export const stemBytes = new Counter('stem_bytes');

export const SUMMARY_TREND_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'];

function headers(extra) {
  return Object.assign({ Authorization: `Bearer ${API_KEY}` }, extra || {});
}

// POST /v1/jobs with the raw clip; returns the job id, or null.
export function upload(clip) {
  const url = `${BASE_URL}/v1/jobs?filename=${encodeURIComponent(clip.name)}`;
  const response = http.post(url, clip.body, {
    headers: headers({ 'Content-Type': 'application/octet-stream' }),
    tags: { name: 'upload' },
    timeout: '60s',
  });
  const accepted = check(response, {
    'upload: 202 Accepted': (r) => r.status === 202,
    'upload: job id': (r) => r.status === 202 && !!r.json('id'),
  });
  if (!accepted) {
    console.warn(`upload of ${clip.name}: ${response.status} ${String(response.body).slice(0, 200)}`);
    return null;
  }
  uploadsAccepted.add(1);
  return response.json('id');
}

// GET /v1/jobs/{id}; returns the parsed job, or null.
export function status(id) {
  const response = http.get(`${BASE_URL}/v1/jobs/${id}`, {
    headers: headers(),
    tags: { name: 'status' },
  });
  const ok = check(response, { 'status: 200': (r) => r.status === 200 });
  return ok ? response.json() : null;
}

// Polls until the job is done, failed or cancelled, or JOB_TIMEOUT_S passes.
export function waitFinished(id, startedMs) {
  for (;;) {
    const job = status(id);
    if (job && ['done', 'failed', 'cancelled'].includes(job.state)) {
      return job;
    }
    if (Date.now() - startedMs > JOB_TIMEOUT_S * 1000) {
      console.warn(`job ${id}: not finished after ${JOB_TIMEOUT_S}s (state ${job && job.state})`);
      return job;
    }
    sleep(POLL_INTERVAL_S);
  }
}

// Downloads every stem of a finished job; true when all came back non-empty.
export function downloadStems(job) {
  const links = (job.links && job.links.stems) || {};
  const stems = Object.keys(links);
  let all = stems.length > 0;
  for (const stem of stems) {
    const response = http.get(`${BASE_URL}${links[stem]}`, {
      headers: headers(),
      tags: { name: 'stem' },
      responseType: 'binary',
      timeout: '60s',
    });
    const ok = check(response, {
      'stem: 200': (r) => r.status === 200,
      'stem: not empty': (r) => r.body && r.body.byteLength > 0,
    });
    if (ok) {
      stemBytes.add(response.body.byteLength);
    }
    all = all && ok;
  }
  return all;
}

// Upload -> follow -> download; records the job's outcome.
export function separateOne(clip) {
  const started = Date.now();
  const id = upload(clip);
  if (!id) {
    jobSuccess.add(false);
    jobsFailed.add(1);
    return;
  }
  const job = waitFinished(id, started);
  const done = !!job && job.state === 'done' && downloadStems(job);
  if (done) {
    jobSeconds.add((Date.now() - started) / 1000);
    jobsDone.add(1);
  } else {
    console.warn(`job ${id}: ${job ? job.state : 'unknown'} ${job && job.error ? JSON.stringify(job.error) : ''}`);
    jobsFailed.add(1);
  }
  jobSuccess.add(done);
}

export function pick(index) {
  return CLIPS[index % CLIPS.length];
}

// handleSummary: the whole k6 summary as JSON (SUMMARY_JSON), and a short text on stdout.
export function summarize(data, scenario) {
  const metric = (name) => (data.metrics[name] ? data.metrics[name].values : {});
  const fmt = (value) => (value === undefined ? '-' : Number(value).toFixed(2));
  const lines = [`scenario ${scenario}`];
  for (const name of ['http_req_duration{name:upload}', 'http_req_duration{name:status}', 'http_req_duration{name:stem}', 'job_seconds']) {
    const values = metric(name);
    if (values['p(95)'] !== undefined) {
      lines.push(`  ${name}: p95 ${fmt(values['p(95)'])} p99 ${fmt(values['p(99)'])} (ms, job_seconds in s)`);
    }
  }
  lines.push(`  uploads accepted: ${metric('uploads_accepted').count || 0} (${fmt(metric('uploads_accepted').rate)}/s)`);
  lines.push(`  jobs done: ${metric('jobs_done').count || 0}, failed: ${metric('jobs_failed').count || 0}`);
  lines.push(`  http_req_failed: ${fmt((metric('http_req_failed').rate || 0) * 100)}%`);
  const failedThresholds = Object.entries(data.metrics)
    .filter(([, m]) => m.thresholds && Object.values(m.thresholds).some((t) => !t.ok))
    .map(([name]) => name);
  lines.push(failedThresholds.length ? `  THRESHOLDS FAILED: ${failedThresholds.join(', ')}` : '  thresholds: all passed');
  const out = { stdout: `${lines.join('\n')}\n` };
  out[__ENV.SUMMARY_JSON || 'summary.json'] = JSON.stringify(data, null, 2);
  return out;
}
