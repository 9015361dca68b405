# digitaltwin: PGXS build
#
#   make && make install            build and install the extension
#   make installcheck               pg_regress + isolation + TAP tests, each on
#                                   its own temporary instance (run as non-root)

MODULE_big = digitaltwin
OBJS = \
	src/util.o \
	src/guc.o \
	src/twin_table.o \
	src/shmem.o \
	src/databases.o \
	src/reload.o \
	src/model.o \
	src/rights.o \
	src/cluster.o \
	src/cluster_ingest.o \
	src/lifecycle.o \
	src/protect.o \
	src/queue.o \
	src/fetch.o \
	src/stage.o \
	src/durable.o \
	src/alerts.o \
	src/outbox.o \
	src/messages.o \
	src/context.o \
	src/timers.o \
	src/history.o \
	src/model_stats.o \
	src/rehearsal.o \
	src/as_of.o \
	src/twin_views.o \
	src/rules.o \
	src/partitions.o \
	src/views.o \
	src/live_fdw.o \
	src/rebuild.o \
	src/worker.o \
	src/launcher.o \
	src/digitaltwin.o

EXTENSION = digitaltwin
DATA = sql/digitaltwin--1.0.sql sql/digitaltwin--1.0--1.1.sql \
	sql/digitaltwin--1.1--1.2.sql sql/digitaltwin--1.2--1.3.sql \
	sql/digitaltwin--1.3--1.4.sql sql/digitaltwin--1.4--1.5.sql \
	sql/digitaltwin--1.5--1.6.sql sql/digitaltwin--1.6--1.7.sql \
	sql/digitaltwin--1.7--1.8.sql sql/digitaltwin--1.8--1.9.sql \
	sql/digitaltwin--1.9--1.10.sql \
	sql/digitaltwin--1.10--1.11.sql \
	sql/digitaltwin--1.11--1.12.sql
HEADERS_digitaltwin = include/digitaltwin.h

PG_CPPFLAGS = -I$(srcdir)/include -I$(srcdir)/src

# Examples (examples/<name>/) plug in as a regress test each, named
# example_<name>, that loads the example's model.sql and generate.sql and
# checks its alerts against an independent query (see examples/README.md).
EXAMPLES = example_card_fraud example_healthcare
REGRESS = setup databases models events processing queue_pages alerts dead_letters views twin_table state_pages c_model roles protect hostile trust context timers timers_batch timers_chain timers_overflow outbox lifecycle history rehearsal twin_views comments patterns rules model_stats model_rights hostile_rights cluster_ingest $(EXAMPLES) drop
REGRESS_OPTS = --temp-instance=tmp_regress --temp-config=$(srcdir)/test/regress.conf
ISOLATION = concurrent_senders outbox_gateways typed_view_drop rights_cache reset_stats_open first_event_snapshot
ISOLATION_OPTS = --temp-instance=tmp_check_iso --temp-config=$(srcdir)/test/isolation.conf
TAP_TESTS = 1

EXTRA_CLEAN = tmp_regress tmp_check tmp_check_iso results output_iso regression.* log

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every source file includes both headers
$(OBJS): src/dt_internal.h include/digitaltwin.h

# Benchmarks start their own throwaway instances (see bench/run.sh, and
# bench/cluster.sh for 1, 2 and 3 nodes behind a coordinator).
.PHONY: bench bench-cluster
bench:
	bash $(srcdir)/bench/run.sh
bench-cluster:
	bash $(srcdir)/bench/cluster.sh

# The C example model is built, installed and tested (sql/c_model.sql) with
# the extension, so that the public header is always exercised.
EXAMPLE_C = examples/heart_rate_c
all: example-c
install: install-example-c
clean: clean-example-c
uninstall: uninstall-example-c
.PHONY: example-c install-example-c clean-example-c uninstall-example-c
example-c:
	$(MAKE) -C $(EXAMPLE_C) PG_CONFIG=$(PG_CONFIG)
install-example-c:
	$(MAKE) -C $(EXAMPLE_C) PG_CONFIG=$(PG_CONFIG) install
clean-example-c:
	$(MAKE) -C $(EXAMPLE_C) PG_CONFIG=$(PG_CONFIG) clean
uninstall-example-c:
	$(MAKE) -C $(EXAMPLE_C) PG_CONFIG=$(PG_CONFIG) uninstall
