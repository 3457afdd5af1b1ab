// Burst: VUS uploads at the same instant (one per VU), then each follows its job to the end:
// how fast uploads are accepted under a spike, and how long the backlog takes to drain.
import { CLIPS, DURATION, SUMMARY_TREND_STATS, VUS, pick, separateOne, summarize } from './lib/common.js';

export const options = {
  scenarios: {
    burst: {
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: 1,
      maxDuration: DURATION,
    },
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_duration{name:upload}': ['p(95)<5000'],
    'http_req_duration{name:status}': ['p(95)<1000'],
    job_success: ['rate>0.99'],
    checks: ['rate>0.99'],
  },
};

export default function () {
  separateOne(pick(__VU));
}

export function handleSummary(data) {
  return summarize(data, `burst (${VUS} uploads at once)`);
}
