import { PluginType, register } from '../plugin/index.js';
import { Exchange } from './exchange.js';

register({ type: PluginType.Event, id: 'exchange', init: () => new Exchange() });
