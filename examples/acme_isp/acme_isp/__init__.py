"""ACME's learned ISP models, usable in ispdc through the ``ispdc.models`` entry point."""
