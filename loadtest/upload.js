// Upload a clip -> follow its status -> download its stems, VUS at a time, for DURATION or
// MAX_ITERATIONS jobs, whichever ends first.
import { CLIPS, DURATION, MAX_ITERATIONS, SUMMARY_TREND_STATS, VUS, pick, separateOne, summarize } from './lib/common.js';

export const options = {
  scenarios: {
    upload: {
      executor: 'shared-iterations',
      vus: VUS,
      iterations: MAX_ITERATIONS,
      maxDuration: DURATION,
    },
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_duration{name:upload}': ['p(95)<2000'],
    'http_req_duration{name:status}': ['p(95)<500'],
    'http_req_duration{name:stem}': ['p(95)<2000'],
    job_success: ['rate>0.99'],
    checks: ['rate>0.99'],
  },
};

export default function () {
  separateOne(pick(__ITER + __VU));
}

export function handleSummary(data) {
  return summarize(data, `upload (${CLIPS.length} clips)`);
}
