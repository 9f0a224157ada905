"""The bundled workflows (``demo``, ``incident``), their tools and the small real service
the incident demo breaks and mends."""
