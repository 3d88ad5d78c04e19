"""The file system of llmos: metadata database, content-addressed blobs, models, datasets, backups.

Import the pieces from their modules (`llmos.storage.db.Database`, `llmos.storage.registry.Registry`,
...); this package keeps `import llmos` fast by importing nothing heavy itself.
"""
