"""The sync engine: pure logic, no Flask, no RQ."""
