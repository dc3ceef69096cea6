/*
 * metrics.h
 *		Shared-memory metrics and limit-hit logging (metrics.c).
 */
#ifndef USAGE_GUARD_METRICS_H
#define USAGE_GUARD_METRICS_H

#include "portability/instr_time.h"

#include "usage_guard.h"

extern bool usage_guard_log_limit_hits;

extern void MetricsShmemRequest(void);
extern void MetricsShmemStartup(void);
extern void MetricsCountDecision(const Decision *d, bool log_hit);
extern void MetricsCountCheck(const Decision *d);
extern void MetricsCountPolicyError(const char *plan_code, bool no_subscription);
extern void MetricsObserveLatency(instr_time elapsed);
extern void MetricsCountAction(const char *action, const char *plan_code);
extern void MetricsCountReservation(const char *outcome, int64 n);

#endif							/* USAGE_GUARD_METRICS_H */
