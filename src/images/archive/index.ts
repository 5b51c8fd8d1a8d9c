/** Image archives: import (OCI layout or docker save) and export (OCI layout with Docker manifest.json). */
export { importArchive, importIndex, type ImportOptions, type ImportResult, type ImportedImage } from './import.js';
export { exportArchive, type ExportImage, type ExportOptions } from './export.js';
export { ociReferenceName } from './common.js';
