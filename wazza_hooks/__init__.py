"""Shared by the ingester and the consumers: the record contract, configuration, tools."""
