"""Machinery shared by several stages: memory sizes and budgets, host/device transfers, the
process's allocator and precision, image conversion, and lazy package exports."""
