/**
 * contrib/strata.service: systemd's own checker (`systemd-analyze verify`) accepts it without a warning, and it
 * keeps containerd's unit's essentials (Delegate, KillMode=process, no resource limits, the overlay module).
 * The checker needs ExecStart's binary to exist, so it verifies a copy pointing at this checkout's bin/stratad.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/ctr.js';
import { REPO } from '../helpers/paths.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const UNIT = join(REPO, 'contrib', 'strata.service');
const text = readFileSync(UNIT, 'utf8');
let tmp: TempDir;

beforeAll(async () => {
  tmp = await tempDir('strata-unit-test-');
});
afterAll(async () => {
  await tmp?.cleanup();
});

async function verify(unitText: string): Promise<{ code: number | null; output: string }> {
  const file = join(tmp.path, 'strata.service');
  writeFileSync(file, unitText.replace('ExecStart=/usr/local/bin/stratad', `ExecStart=${join(REPO, 'bin', 'stratad')}`));
  const r = await run('systemd-analyze', ['verify', file]);
  return { code: r.code, output: (r.stdout + r.stderr).trim() };
}

/** Every `Key=value` of a section, in order. */
function section(name: string): [string, string][] {
  const body = text.split(/^\[/m).find((s) => s.startsWith(`${name}]`)) ?? '';
  return body
    .split('\n')
    .filter((l) => /^[A-Za-z]+=/.test(l))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]);
}

describe('contrib/strata.service', () => {
  it('passes systemd-analyze verify without a warning', async () => {
    expect(await verify(text)).toEqual({ code: 0, output: '' });
  });

  it('is checked for real: a misspelt key or a bad value is reported', async () => {
    const r = await verify(text.replace('Delegate=yes', 'Delegat=yes').replace('KillMode=process', 'KillMode=proces'));
    expect(r.output).toContain("Unknown key 'Delegat' in section [Service]");
    expect(r.output).toContain('Failed to parse kill mode specification, ignoring: proces');
  });

  it("keeps containerd's service settings", () => {
    const svc = new Map(section('Service'));
    expect(svc.get('ExecStartPre')).toBe('-/sbin/modprobe overlay');
    expect(svc.get('ExecStart')).toBe('/usr/local/bin/stratad --config /etc/strata/config.toml');
    expect(svc.get('Type')).toBe('simple'); // no sd_notify in stratad
    expect(svc.get('Delegate')).toBe('yes');
    expect(svc.get('KillMode')).toBe('process');
    expect(svc.get('Restart')).toBe('always');
    for (const k of ['LimitNPROC', 'LimitCORE', 'LimitNOFILE', 'TasksMax']) expect(svc.get(k), k).toBe('infinity');
    expect(svc.get('OOMScoreAdjust')).toBe('-999');
    expect(new Map(section('Install')).get('WantedBy')).toBe('multi-user.target');
    expect(new Map(section('Unit')).get('After')).toBe('network.target local-fs.target');
  });
});
