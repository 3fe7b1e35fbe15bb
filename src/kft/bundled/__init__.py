"""Small datasets shipped with kft (data.source: bundled:NAME)."""
