#!/usr/bin/env node
// Checks deploy/kubernetes without a cluster:
//  1. every object of every manifest against its Kubernetes schema
//     (npm's kubernetes-models: the model class of its apiVersion/kind, .validate()),
//     YAML parsed as Kubernetes does (YAML 1.1: 0400 is octal) with npm's yaml;
//  2. the cross-references a schema cannot see: the front's --nodes dns name is
//     the headless Service's name, namespace and port; Services, the
//     StatefulSet's serviceName and the PodDisruptionBudgets select the pods
//     they mean; Secret keys the pods use exist (and are mounted 0400: paddockd
//     refuses keys others may read); files named by paddockd flags lie in a
//     mounted volume; probe ports are container ports; the kustomization lists
//     every manifest; the paddockd flags exist in `paddockd --help` (when built);
//  3. negative checks: broken copies (replicas a string, a wrong dns name, a
//     missing Secret key, a probe on another port, an unknown flag) must be
//     rejected, so the checks above cannot pass by checking nothing.
//
// usage: node validate_manifests.mjs [--modules DIR] [--paddockd PATH] [--manifests DIR]
//   --modules   folder holding node_modules with kubernetes-models and yaml
//               (default $PADDOCK_NODE_DEPS or /usr/local/lib/paddock-node:
//               scripts/install-deps.sh installs them there)
//   --paddockd  the built paddockd, for its --help (absent: that check is skipped)
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const opts = {
  modules: process.env.PADDOCK_NODE_DEPS || '/usr/local/lib/paddock-node',
  paddockd: process.env.PADDOCKD || '',
  manifests: path.join(repo, 'deploy', 'kubernetes'),
};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  const key = a.replace(/^--/, '');
  if (!(key in opts) || i + 1 >= process.argv.length) {
    console.error(`usage: node validate_manifests.mjs [--modules DIR] [--paddockd PATH] [--manifests DIR] (bad argument '${a}')`);
    process.exit(2);
  }
  opts[key] = process.argv[++i];
}

const require = createRequire(path.join(path.resolve(opts.modules), 'package.json'));
let YAML;
try {
  YAML = require('yaml');
  require('kubernetes-models/v1/Namespace');
} catch (e) {
  console.error(`validate_manifests: the npm packages kubernetes-models and yaml are missing under ` +
    `${opts.modules}/node_modules (${e.code || e.message}).\n` +
    `Install them with scripts/install-deps.sh (npm install into ${opts.modules}), ` +
    `or point --modules / PADDOCK_NODE_DEPS at a folder that has them.`);
  process.exit(1);
}

let failures = 0, passes = 0;
function check(ok, what) {
  if (ok) { passes++; console.log(`ok    ${what}`); }
  else { failures++; console.log(`FAIL  ${what}`); }
}
const clone = (o) => JSON.parse(JSON.stringify(o));

// ---------- loading ----------
function parseFile(file) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'), { version: '1.1' });
  const objs = [];
  for (const d of docs) {
    if (d.errors.length) throw new Error(`${path.basename(file)}: ${d.errors.map((e) => e.message).join('; ')}`);
    const o = d.toJS();
    if (o !== null && o !== undefined) objs.push(o);
  }
  return objs;
}

const files = fs.readdirSync(opts.manifests).filter((f) => /\.ya?ml$/.test(f)).sort();
const byFile = {};
for (const f of files) {
  try { byFile[f] = parseFile(path.join(opts.manifests, f)); check(true, `${f}: parses (${byFile[f].length} object(s))`); }
  catch (e) { check(false, `${f}: ${e.message}`); byFile[f] = []; }
}
const kustomization = (byFile['kustomization.yaml'] || [])[0];
delete byFile['kustomization.yaml'];

// Secrets made by make-secrets.sh (when openssl is there): the same shape.
let generated = null;
const makeSecrets = path.join(opts.manifests, 'make-secrets.sh');
if (fs.existsSync(makeSecrets)) {
  try {
    const out = execFileSync('bash', [makeSecrets], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    generated = YAML.parseAllDocuments(out, { version: '1.1' }).map((d) => d.toJS()).filter(Boolean);
    check(generated.length > 0, `make-secrets.sh: prints ${generated.length} Secret(s)`);
  } catch (e) {
    check(false, `make-secrets.sh runs (${(e.stderr || e.message).toString().trim()})`);
  }
}

// ---------- 1. schemas ----------
function modelFor(obj) {
  if (!obj || typeof obj.apiVersion !== 'string' || typeof obj.kind !== 'string') return null;
  try {
    const mod = require(`kubernetes-models/${obj.apiVersion}/${obj.kind}`);
    return mod[obj.kind] || null;
  } catch { return null; }
}
// Throws with the schema's complaint, or returns.
function validateObject(obj) {
  const Model = modelFor(obj);
  if (!Model) throw new Error(`no Kubernetes model for apiVersion '${obj && obj.apiVersion}' kind '${obj && obj.kind}'`);
  new Model(obj).validate();
  if (!obj.metadata || !obj.metadata.name) throw new Error('metadata.name is missing');
}
const schemaOk = (obj) => { try { validateObject(obj); return null; } catch (e) { return e.message; } };

const all = [];
for (const [f, objs] of Object.entries(byFile)) {
  for (const o of objs) {
    all.push({ file: f, obj: o });
    const err = schemaOk(o);
    check(err === null, `${f}: ${o.kind}/${o.metadata && o.metadata.name} is a valid ${o.apiVersion} ${o.kind}${err ? `: ${err}` : ''}`);
  }
}
for (const o of generated || []) {
  const err = schemaOk(o);
  check(err === null, `make-secrets.sh: Secret/${o.metadata && o.metadata.name} is valid${err ? `: ${err}` : ''}`);
}

// ---------- 2. cross-references ----------
// The deployed objects: everything but the example Secrets, which describe the
// shape the pods need; crossRefs() takes the Secrets to check against apart.
function crossRefs(objs, secrets, kust) {
  const errs = [];
  const find = (kind, name) => objs.find((o) => o.kind === kind && o.metadata.name === name);
  const nsObj = objs.find((o) => o.kind === 'Namespace');
  if (!nsObj) errs.push('no Namespace object');
  const ns = nsObj ? nsObj.metadata.name : 'paddock';
  const seen = new Set();
  for (const o of [...objs, ...secrets]) {
    if (o.kind !== 'Namespace' && o.metadata.namespace !== ns) errs.push(`${o.kind}/${o.metadata.name}: namespace '${o.metadata.namespace}', not '${ns}'`);
    const key = `${o.kind}/${o.metadata.name}`;
    if (objs.includes(o) && seen.has(key)) errs.push(`${key} defined twice`);
    seen.add(key);
  }
  const workloads = objs.filter((o) => ['DaemonSet', 'StatefulSet', 'Deployment'].includes(o.kind));
  const podLabels = (w) => (w.spec.template.metadata && w.spec.template.metadata.labels) || {};
  const selects = (sel, labels) => sel && Object.keys(sel).length > 0 && Object.entries(sel).every(([k, v]) => labels[k] === v);
  const selected = (sel) => workloads.filter((w) => selects(sel, podLabels(w)));
  const containersOf = (w) => [...(w.spec.template.spec.initContainers || []), ...w.spec.template.spec.containers];
  const portOf = (c, p) => (c.ports || []).find((cp) => cp.name === p || cp.containerPort === p);

  for (const w of workloads) {
    if (!selects(w.spec.selector.matchLabels, podLabels(w))) errs.push(`${w.kind}/${w.metadata.name}: selector does not match its pod labels`);
    const spec = w.spec.template.spec;
    const vols = new Map((spec.volumes || []).map((v) => [v.name, v]));
    const claims = new Set((w.spec.volumeClaimTemplates || []).map((c) => c.metadata.name));
    for (const c of containersOf(w)) {
      const where = `${w.kind}/${w.metadata.name} container ${c.name}`;
      for (const m of c.volumeMounts || [])
        if (!vols.has(m.name) && !claims.has(m.name)) errs.push(`${where}: mounts '${m.name}', which is no volume`);
      for (const kind of ['readinessProbe', 'livenessProbe', 'startupProbe']) {
        const p = c[kind];
        if (!p) continue;
        const port = (p.tcpSocket && p.tcpSocket.port) || (p.httpGet && p.httpGet.port) || (p.grpc && p.grpc.port);
        if (port !== undefined && !portOf(c, port)) errs.push(`${where}: ${kind} port ${port} is not a port of the container`);
        if (p.exec) {
          const sock = p.exec.command[p.exec.command.indexOf('--socket') + 1];
          const own = flagValue(c, '--socket');
          if (p.exec.command.includes('--socket') && sock !== own) errs.push(`${where}: ${kind} asks socket ${sock}, paddockd serves ${own}`);
        }
      }
      // Files named by paddockd's flags lie in a mounted volume; for a Secret
      // volume, the file is one of its keys (items) and the key exists.
      for (const flag of ['--token-file', '--tls-cert', '--tls-key', '--tls-client-ca', '--node-token-file', '--node-tls-ca', '--node-tls-cert', '--node-tls-key']) {
        const file = flagValue(c, flag);
        if (file === undefined) continue;
        const m = (c.volumeMounts || []).find((vm) => file.startsWith(vm.mountPath.replace(/\/?$/, '/')));
        if (!m) { errs.push(`${where}: ${flag}=${file} is in no mounted volume`); continue; }
        const v = vols.get(m.name);
        if (v && v.secret) {
          const rel = file.slice(m.mountPath.replace(/\/?$/, '/').length);
          const items = v.secret.items;
          const key = items ? (items.find((it) => it.path === rel) || {}).key : rel;
          if (!key) errs.push(`${where}: ${flag}=${file}: '${rel}' is no item of volume ${v.name}`);
          else if (!secretHasKey(secrets, v.secret.secretName, key)) errs.push(`${where}: ${flag}: Secret ${v.secret.secretName} has no key '${key}'`);
        }
      }
      for (const e of c.env || []) {
        const ref = e.valueFrom && e.valueFrom.secretKeyRef;
        if (ref && !ref.optional && !secretHasKey(secrets, ref.name, ref.key)) errs.push(`${where}: env ${e.name}: Secret ${ref.name} has no key '${ref.key}'`);
      }
    }
    for (const v of spec.volumes || []) {
      if (!v.secret) continue;
      if (!secrets.some((s) => s.metadata.name === v.secret.secretName)) { errs.push(`${w.kind}/${w.metadata.name}: volume ${v.name}: no Secret ${v.secret.secretName}`); continue; }
      for (const it of v.secret.items || [])
        if (!secretHasKey(secrets, v.secret.secretName, it.key)) errs.push(`${w.kind}/${w.metadata.name}: volume ${v.name}: Secret ${v.secret.secretName} has no key '${it.key}'`);
      const modes = [v.secret.defaultMode ?? 0o644, ...(v.secret.items || []).map((it) => it.mode).filter((m) => m !== undefined)];
      if (modes.some((m) => m & 0o077)) errs.push(`${w.kind}/${w.metadata.name}: volume ${v.name}: mode ${modes.map((m) => m.toString(8)).join(',')} lets others read it; paddockd refuses that (use defaultMode: 0400)`);
    }
    if (spec.securityContext && spec.securityContext.fsGroup !== undefined && (spec.volumes || []).some((v) => v.secret))
      errs.push(`${w.kind}/${w.metadata.name}: fsGroup makes Secret files group-readable; paddockd refuses them`);
  }

  for (const s of objs.filter((o) => o.kind === 'Service')) {
    const pods = selected(s.spec.selector);
    if (pods.length === 0) { errs.push(`Service/${s.metadata.name}: selects no workload's pods`); continue; }
    for (const p of s.spec.ports || []) {
      const target = p.targetPort ?? p.port;
      for (const w of pods)
        if (!w.spec.template.spec.containers.some((c) => portOf(c, target)))
          errs.push(`Service/${s.metadata.name}: targetPort ${target} is no container port of ${w.kind}/${w.metadata.name}`);
    }
  }
  for (const b of objs.filter((o) => o.kind === 'PodDisruptionBudget'))
    if (selected(b.spec.selector && b.spec.selector.matchLabels).length === 0) errs.push(`PodDisruptionBudget/${b.metadata.name}: selects no workload's pods`);
  for (const st of workloads.filter((w) => w.kind === 'StatefulSet')) {
    const svc = find('Service', st.spec.serviceName);
    if (!svc) errs.push(`StatefulSet/${st.metadata.name}: serviceName ${st.spec.serviceName} is no Service`);
    else if (svc.spec.clusterIP !== 'None' || !selects(svc.spec.selector, podLabels(st)))
      errs.push(`StatefulSet/${st.metadata.name}: serviceName ${st.spec.serviceName} is not a headless Service of its pods`);
  }

  // The fleet: a front's --nodes dns:NAME:PORT is a headless Service of the node pods.
  const fronts = workloads.filter((w) => w.spec.template.spec.containers.some((c) => flagValue(c, '--nodes') !== undefined));
  const nodes = workloads.filter((w) => w.spec.template.spec.containers.some((c) => isPaddockd(c) && flagValue(c, '--nodes') === undefined));
  if (fronts.length === 0) errs.push('no front (a paddockd with --nodes)');
  if (nodes.length === 0) errs.push('no node workload (a paddockd without --nodes)');
  for (const f of fronts) {
    const c = f.spec.template.spec.containers.find((x) => flagValue(x, '--nodes') !== undefined);
    const spec = flagValue(c, '--nodes');
    const m = /^dns:([^:]+):(\d+)$/.exec(spec);
    if (!m) { errs.push(`${f.kind}/${f.metadata.name}: --nodes ${spec} is not dns:NAME:PORT`); continue; }
    const [, name, port] = m;
    const parts = name.split('.');
    const svc = find('Service', parts[0]);
    const okName = svc && [`${svc.metadata.name}.${svc.metadata.namespace}`, `${svc.metadata.name}.${svc.metadata.namespace}.svc`,
      `${svc.metadata.name}.${svc.metadata.namespace}.svc.cluster.local`].includes(name);
    if (!okName) { errs.push(`${f.kind}/${f.metadata.name}: --nodes ${spec}: '${name}' is no Service's DNS name (SERVICE.${ns}.svc.cluster.local)`); continue; }
    if (svc.spec.clusterIP !== 'None') errs.push(`--nodes ${spec}: Service ${svc.metadata.name} is not headless (clusterIP: None), so it resolves to one virtual IP, not to every node`);
    const sp = (svc.spec.ports || []).find((p) => p.port === Number(port));
    if (!sp) errs.push(`--nodes ${spec}: Service ${svc.metadata.name} has no port ${port}`);
    if (!nodes.some((n) => selects(svc.spec.selector, podLabels(n)))) errs.push(`--nodes ${spec}: Service ${svc.metadata.name} does not select the node pods`);
    // A headless Service hands out pod IPs and the Service port is not
    // translated: the node must listen on that very port.
    for (const n of nodes) {
      const nc = n.spec.template.spec.containers.find(isPaddockd);
      const listen = flagValue(nc, '--listen-tcp') || '';
      if (!listen.endsWith(`:${port}`)) errs.push(`${n.kind}/${n.metadata.name}: --listen-tcp ${listen} is not on port ${port} of --nodes ${spec}`);
    }
    // The token the front sends is the one the nodes check: the same Secret key.
    const sent = secretFileRef(f, c, '--node-token-file');
    for (const n of nodes) {
      const nc = n.spec.template.spec.containers.find(isPaddockd);
      const checked = secretFileRef(n, nc, '--token-file');
      if (!sent || !checked || sent !== checked) errs.push(`the front's --node-token-file (${sent}) is not the nodes' --token-file (${checked})`);
    }
  }
  if (kust) {
    const want = Object.keys(byFile).filter((f) => !/secret/.test(f)).sort();
    const got = [...(kust.resources || [])].sort();
    if (JSON.stringify(want) !== JSON.stringify(got)) errs.push(`kustomization.yaml lists ${got.join(',')}; the manifests are ${want.join(',')}`);
  }
  return errs;
}
function isPaddockd(c) { return (c.command || []).some((x) => /paddockd$/.test(x)); }
// --flag=value or --flag value in a container's args; '' for a bare flag.
function flagValue(c, flag) {
  const args = [...(c.command || []), ...(c.args || [])];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === flag) return (i + 1 < args.length && !String(args[i + 1]).startsWith('--')) ? args[i + 1] : '';
    if (String(args[i]).startsWith(flag + '=')) return args[i].slice(flag.length + 1);
  }
  return undefined;
}
function secretHasKey(secrets, name, key) {
  const s = secrets.find((x) => x.metadata.name === name);
  return !!s && ((s.data && key in s.data) || (s.stringData && key in s.stringData));
}
// "secret/key" a flag's file comes from, or undefined.
function secretFileRef(w, c, flag) {
  const file = flagValue(c, flag);
  if (!file) return undefined;
  const m = (c.volumeMounts || []).find((vm) => file.startsWith(vm.mountPath.replace(/\/?$/, '/')));
  const v = m && (w.spec.template.spec.volumes || []).find((x) => x.name === m.name);
  if (!v || !v.secret) return undefined;
  const rel = file.slice(m.mountPath.replace(/\/?$/, '/').length);
  const key = v.secret.items ? (v.secret.items.find((it) => it.path === rel) || {}).key : rel;
  return `${v.secret.secretName}/${key}`;
}

const deployed = all.filter((x) => x.obj.kind !== 'Secret').map((x) => x.obj);
const exampleSecrets = all.filter((x) => x.obj.kind === 'Secret').map((x) => x.obj);
check(exampleSecrets.length > 0, 'secrets.example.yaml describes the Secrets');
const errs = crossRefs(deployed, exampleSecrets, kustomization);
check(errs.length === 0, `cross-references hold${errs.length ? ':\n      ' + errs.join('\n      ') : ''}`);
if (generated) {
  const same = JSON.stringify(exampleSecrets.map((s) => [s.metadata.name, s.type, Object.keys(s.stringData || s.data).sort()]).sort()) ===
    JSON.stringify(generated.map((s) => [s.metadata.name, s.type, Object.keys(s.data || s.stringData).sort()]).sort());
  check(same, 'make-secrets.sh makes the Secrets of secrets.example.yaml (names, types, keys)');
  const g = crossRefs(deployed, generated, kustomization);
  check(g.length === 0, `cross-references hold with make-secrets.sh's Secrets${g.length ? ': ' + g.join('; ') : ''}`);
}

// paddockd's flags in the manifests exist (when paddockd is built).
const usedFlags = new Set();
for (const w of deployed.filter((o) => o.spec && o.spec.template))
  for (const c of w.spec.template.spec.containers.filter(isPaddockd))
    for (const a of c.args || []) if (String(a).startsWith('--')) usedFlags.add(String(a).split('=')[0]);
if (opts.paddockd && fs.existsSync(opts.paddockd)) {
  const help = execFileSync(opts.paddockd, ['--help'], { encoding: 'utf8' });
  const known = new Set(help.match(/--[a-z][a-z0-9-]*/g));
  const unknown = [...usedFlags].filter((f) => !known.has(f));
  check(unknown.length === 0, `paddockd --help knows every flag used (${usedFlags.size})${unknown.length ? ': unknown ' + unknown.join(', ') : ''}`);
  check(!known.has('--no-such-flag-at-all'), 'paddockd --help: an unknown flag is not found (negative)');
} else {
  console.log(`skip  paddockd flags against --help: no built paddockd${opts.paddockd ? ' at ' + opts.paddockd : ''} (pass --paddockd)`);
}

// ---------- 3. negative checks: broken copies must be rejected ----------
const pick = (kind) => clone(deployed.find((o) => o.kind === kind));
const sts = pick('StatefulSet');
sts.spec.replicas = '1';
check(schemaOk(sts) !== null, `negative: StatefulSet with replicas "1" (a string) is rejected (${schemaOk(sts)})`);
const ds = pick('DaemonSet');
ds.spec.template.spec.containers[0].ports[0].containerPort = 'seven';
check(schemaOk(ds) !== null, 'negative: DaemonSet with containerPort "seven" is rejected');
const svc = pick('Service');
delete svc.spec.ports[0].port;
check(schemaOk(svc) !== null, 'negative: Service port without port is rejected');
check(schemaOk({ apiVersion: 'apps/v1', kind: 'DaemonSett', metadata: { name: 'x' } }) !== null, 'negative: an unknown kind is rejected');

function brokenRefs(label, mutate, expect) {
  const objs = clone(deployed);
  const secrets = clone(exampleSecrets);
  const kust = kustomization ? clone(kustomization) : undefined;
  mutate(objs, secrets, kust);
  const e = crossRefs(objs, secrets, kust);
  check(e.some((x) => x.includes(expect)), `negative: ${label} is caught${e.length ? ` (${e[0]})` : ''}`);
}
const frontC = (objs) => objs.find((o) => o.kind === 'StatefulSet').spec.template.spec.containers[0];
const nodeC = (objs) => objs.find((o) => o.kind === 'DaemonSet').spec.template.spec.containers[0];
const setFlag = (c, flag, value) => { c.args = c.args.map((a) => (String(a).startsWith(flag + '=') ? `${flag}=${value}` : a)); };
brokenRefs('--nodes naming another Service', (o) => setFlag(frontC(o), '--nodes', 'dns:paddock-node.paddock.svc.cluster.local:7443'), 'is no Service');
brokenRefs('--nodes in another namespace', (o) => setFlag(frontC(o), '--nodes', 'dns:paddock-nodes.default.svc.cluster.local:7443'), 'is no Service');
brokenRefs('--nodes on another port', (o) => setFlag(frontC(o), '--nodes', 'dns:paddock-nodes.paddock.svc.cluster.local:7444'), 'has no port 7444');
brokenRefs('a node Service that is not headless', (o) => { o.find((x) => x.metadata.name === 'paddock-nodes').spec.clusterIP = '10.0.0.9'; }, 'not headless');
brokenRefs('a Secret without the key a pod reads', (o, s) => { delete s.find((x) => x.metadata.name === 'paddock-tokens').stringData['node-token']; }, "has no key 'node-token'");
brokenRefs('a world-readable token', (o) => { o.find((x) => x.kind === 'DaemonSet').spec.template.spec.volumes.find((v) => v.name === 'node-token').secret.defaultMode = 0o444; }, 'lets others read');
brokenRefs('a liveness probe on another port', (o) => { nodeC(o).livenessProbe.tcpSocket.port = 7444; }, 'livenessProbe port 7444');
brokenRefs('a readiness probe on another socket', (o) => { nodeC(o).readinessProbe.exec.command[2] = '/run/other.sock'; }, 'readinessProbe asks socket');
brokenRefs('a token file outside any volume', (o) => setFlag(nodeC(o), '--token-file', '/etc/elsewhere/token'), 'is in no mounted volume');
brokenRefs('front and nodes with different tokens', (o) => { frontC(o).volumeMounts.find((m) => m.name === 'node-token').name = 'harness-token'; setFlag(frontC(o), '--node-token-file', '/etc/paddock/node-token/harness-token'); }, 'is not the nodes');
brokenRefs('a kustomization missing a manifest', (o, s, k) => { k.resources = k.resources.slice(1); }, 'kustomization.yaml lists');

console.log(`\n${passes} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
