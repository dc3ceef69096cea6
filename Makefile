# usage_guard: PGXS build.  `make && make install`, then the test targets
# below (run as a non-root user: they start throwaway clusters).

EXTENSION = usage_guard
EXTVERSION = $(shell sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" usage_guard.control)

MODULE_big = usage_guard
OBJS = src/usage_guard.o src/api.o src/amount.o src/cache.o src/counters.o \
       src/decision.o src/ledger.o src/period.o src/policy.o src/query.o \
       src/writes.o src/metrics.o
PG_CPPFLAGS = -I$(srcdir)/src
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers

DATA = $(wildcard sql/$(EXTENSION)--*.sql)

REGRESS = setup catalog check consume record periods billing overrides \
          idempotency soft_mode errors totals meter_table counters metrics rollups maintenance sync reports upgrade
REGRESS_OPTS = --temp-instance=./tmp_regress --temp-config=$(srcdir)/test/usage_guard.conf

ISOLATION = consume_last_unit reload_after_restart catalog_change
ISOLATION_OPTS = --inputdir=$(srcdir)/test --temp-instance=./tmp_isolation \
                 --temp-config=$(srcdir)/test/usage_guard.conf

TAP_TESTS = 1
PROVE_TESTS = $(wildcard test/t/*.pl)

EXTRA_CLEAN = tmp_regress tmp_isolation output_iso tmp_check

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Separate targets, so one failing suite does not hide the next.
.PHONY: regress isolation tap
regress:
	$(pg_regress_installcheck) $(REGRESS_OPTS) $(REGRESS)
isolation:
	$(pg_isolation_regress_installcheck) $(ISOLATION_OPTS) $(ISOLATION)
tap:
	$(prove_installcheck)

# The operators' command line (C, libpq), installed next to psql.
PG_INCLUDEDIR := $(shell $(PG_CONFIG) --includedir)
PG_LIBDIR := $(shell $(PG_CONFIG) --libdir)
all: usage_guard_ctl
usage_guard_ctl: cli/usage_guard_ctl.c
	$(CC) $(CFLAGS) -Wall -Wextra -Wno-unused-parameter -I$(PG_INCLUDEDIR) -o $@ $< -L$(PG_LIBDIR) -lpq
install: install-ctl
.PHONY: install-ctl
install-ctl: usage_guard_ctl
	$(INSTALL_PROGRAM) usage_guard_ctl '$(DESTDIR)$(bindir)/usage_guard_ctl'
EXTRA_CLEAN += usage_guard_ctl
