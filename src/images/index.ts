/** The image subsystem's public surface: contracts, platforms, manifest helpers. */
export * from './types.js';
export * from './platforms.js';
export * from './manifest.js';
