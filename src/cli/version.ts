/** strata version: the client's and the server's versions. */
import { STRATA_REVISION, STRATA_VERSION } from '../version.js';
import type { Command } from './command.js';
import { printJson, write } from './output.js';

export const version: Command = {
  name: 'version',
  summary: 'print the client and server versions',
  async run({ session }) {
    const client = { version: STRATA_VERSION, revision: STRATA_REVISION, nodeVersion: process.version };
    if (!session.json) {
      await write(`Client:\n  Version:  ${client.version}\n  Revision: ${client.revision}\n  Node version: ${client.nodeVersion}\n\n`);
    }
    const c = await session.connect();
    const v = await c.call(c.version, c.version.version, {});
    const { uuid } = await c.call(c.introspection, c.introspection.server, {});
    if (session.json) {
      return printJson({ client, server: { version: v.version, revision: v.revision, uuid } });
    }
    await write(`Server:\n  Version:  ${v.version}\n  Revision: ${v.revision}\n  UUID: ${uuid}\n`);
    if (v.version !== client.version) process.stderr.write('WARNING: version mismatch\n');
    if (v.revision !== client.revision) process.stderr.write('WARNING: revision mismatch\n');
  },
};
