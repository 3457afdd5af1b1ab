// Read-heavy: a few jobs are submitted and finished in setup(), then VUS poll their status
// (and the job list) for DURATION or MAX_ITERATIONS requests, whichever ends first.
import http from 'k6/http';
import { check } from 'k6';
import {
  BASE_URL, CLIPS, DURATION, MAX_ITERATIONS, SUMMARY_TREND_STATS, VUS, pick, status, summarize, upload, waitFinished,
} from './lib/common.js';

const SEED_JOBS = parseInt(__ENV.SEED_JOBS || '3', 10);

export const options = {
  setupTimeout: '300s',
  scenarios: {
    status: {
      executor: 'shared-iterations',
      vus: VUS,
      iterations: MAX_ITERATIONS,
      maxDuration: DURATION,
    },
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_duration{name:status}': ['p(95)<200', 'p(99)<500'],
    'http_req_duration{name:list}': ['p(95)<500'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  const ids = [];
  for (let i = 0; i < SEED_JOBS; i += 1) {
    const id = upload(pick(i));
    if (id) {
      ids.push(id);
    }
  }
  // Finished and running jobs alike are polled; wait so both kinds were seen.
  for (const id of ids) {
    waitFinished(id, Date.now());
  }
  if (ids.length === 0) {
    throw new Error('setup: no job could be submitted');
  }
  return { ids };
}

export default function (data) {
  const id = data.ids[(__ITER + __VU) % data.ids.length];
  status(id);
  if (__ITER % 10 === 0) {
    const response = http.get(`${BASE_URL}/v1/jobs`, {
      headers: { Authorization: `Bearer ${__ENV.API_KEY || ''}` },
      tags: { name: 'list' },
    });
    check(response, { 'list: 200': (r) => r.status === 200 });
  }
}

export function handleSummary(data) {
  return summarize(data, `status (${CLIPS.length} clips, ${SEED_JOBS} seed jobs)`);
}
