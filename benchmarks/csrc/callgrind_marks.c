/* Callgrind client requests for benchmarks/callgrind_marks.py: counting starts and stops
 * around the measured calls only, so a Python engine's start-up (torch import, model load),
 * which dwarfs a few decode steps, runs uninstrumented. Outside valgrind these are no-ops. */
#include <valgrind/callgrind.h>

void marks_start(void) {
    CALLGRIND_START_INSTRUMENTATION;
    CALLGRIND_ZERO_STATS;
}

/* Writes the counts since the last dump (or start) to a numbered file tagged `tag`; resets them. */
void marks_dump(const char* tag) { CALLGRIND_DUMP_STATS_AT(tag); }

void marks_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
