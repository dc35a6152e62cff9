"""The system of record's own concerns: tombstones of purged records (410) and the one-time
import of records older versions kept in Redis."""
