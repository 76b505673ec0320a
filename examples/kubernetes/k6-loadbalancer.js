// Load test of a meshgate install through its LoadBalancer (or NodePort) address.
//
//   GATEWAY_URL=http://$GATEWAY HOST=demoapp.magedu.com k6 run examples/kubernetes/k6-loadbalancer.js
//
// GATEWAY_URL is where the gateway Service answers (the LoadBalancer address, or
// http://NODE:NODEPORT); HOST is the Host header a VirtualService routes (the seed's
// demoapp.magedu.com by default), so no DNS or /etc/hosts entry is needed.
// Optional: PATH_ (request path, default /), P99_MS (the p(99) latency bound, default 500),
// MAX_VUS (the peak of the ramp, default 50), DURATION_SCALE (multiplies every stage, e.g. 0.1
// for a quick smoke run).
import http from 'k6/http';
import { check } from 'k6';

const GATEWAY_URL = (__ENV.GATEWAY_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const HOST = __ENV.HOST || 'demoapp.magedu.com';
const PATH = __ENV.PATH_ || '/';
const P99_MS = Number(__ENV.P99_MS || 500);
const MAX_VUS = Number(__ENV.MAX_VUS || 50);
const SCALE = Number(__ENV.DURATION_SCALE || 1);

// Seconds scaled by DURATION_SCALE, never below one second (k6 rejects a 0s stage).
function secs(s) {
  return `${Math.max(1, Math.round(s * SCALE))}s`;
}

export const options = {
  // Ramp up in steps, hold at the peak, ramp down: a LoadBalancer spreads connections over the
  // gateway replicas, and the HPA (80% CPU) gets time to react during the hold.
  stages: [
    { duration: secs(30), target: Math.max(1, Math.round(MAX_VUS / 5)) },
    { duration: secs(60), target: MAX_VUS },
    { duration: secs(120), target: MAX_VUS },
    { duration: secs(30), target: 0 },
  ],
  thresholds: {
    // Under 1% failed requests (non-2xx/3xx or connection errors) over the whole run.
    http_req_failed: ['rate<0.01'],
    // Tail latency of the route through the gateway to the backend.
    http_req_duration: [`p(99)<${P99_MS}`],
    // Every check (status 200) should pass too; 99% tolerates a replica rolling mid-run.
    checks: ['rate>0.99'],
  },
  // The gateway's Host-based routing is what is tested: do not follow redirects to other hosts.
  maxRedirects: 0,
};

const params = {
  headers: { Host: HOST },
  // Group every URL under one name in the metrics, whatever PATH_ is.
  tags: { name: 'gateway' },
};

export default function () {
  const res = http.get(`${GATEWAY_URL}${PATH}`, params);
  check(res, {
    'status is 200': (r) => r.status === 200,
  });
}
