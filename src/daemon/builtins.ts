/**
 * Every built-in plugin, registered by importing its module. A new subsystem adds one line here.
 */
import '../events/plugin.js';
import '../content/plugin.js';
import '../metadata/plugin.js';
import '../api/plugins.js';
import '../snapshots/overlay/plugin.js';
import '../snapshots/native/plugin.js';
import '../snapshots/btrfs/plugin.js';
import '../snapshots/devmapper/plugin.js';
import '../snapshots/zfs/plugin.js';
import '../snapshots/aufs/plugin.js';
import '../snapshots/erofs/plugin.js';
import '../snapshots/stargz/plugin.js';
import '../diff/plugin.js';
import '../images/plugin.js';
import '../gc/plugin.js';
import '../runtime/plugin.js';
