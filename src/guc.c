/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  Configuration parameters of digitaltwin.
 *
 * Parameters that size shared memory or the set of background workers are
 * PGC_POSTMASTER; the ones the worker loop reads each batch can be changed
 * with a reload.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/guc.h"
#include "utils/varlena.h"

#include "dt_internal.h"

/* digitaltwin.databases must parse as a list of names */
static bool
dt_check_databases(char **newval, void **extra, GucSource source)
{
	char	   *raw = pstrdup(*newval);
	List	   *names;
	bool		ok;

	ok = SplitIdentifierString(raw, ',', &names);
	if (!ok)
		GUC_check_errdetail("List syntax is invalid.");
	list_free(names);
	pfree(raw);
	return ok;
}

/*
 * Whether digitaltwin.databases lets a database be served: an empty list
 * means every database.  Names compare as SplitIdentifierString leaves
 * them (unquoted names folded to lower case, as in SQL).
 */
bool
dt_database_listed(const char *dbname)
{
	char	   *raw;
	List	   *names;
	ListCell   *lc;
	bool		listed = false;

	if (dt_databases == NULL || dt_databases[0] == '\0')
		return true;
	raw = pstrdup(dt_databases);
	if (!SplitIdentifierString(raw, ',', &names))
		return false;
	foreach(lc, names)
	{
		if (strcmp((const char *) lfirst(lc), dbname) == 0)
		{
			listed = true;
			break;
		}
	}
	list_free(names);
	pfree(raw);
	return listed;
}

char	   *dt_databases = NULL;
int			dt_workers = 2;
int			dt_max_databases = 8;
int			dt_max_memory_per_database_mb = 0;
int			dt_max_memory_mb = 256;
int			dt_batch_size = 50000;
int			dt_poll_interval_ms = 1000;
int			dt_batch_delay_ms = 0;
int			dt_model_timeout_ms = 5000;
int			dt_max_payload_kb = 1024;
int			dt_max_state_kb = 1024;
int			dt_queue_rotation_ms = 1000;
int			dt_log_partition_s = 3600;
int			dt_alert_retention_s = 7 * 24 * 3600;
int			dt_dead_letter_retention_s = 30 * 24 * 3600;
int			dt_max_twins_per_model = 0;
bool		dt_allow_superuser_models = false;
bool		dt_live_view_huge_pages = true;
int			dt_max_message_depth = 16;
int			dt_outbox_retention_s = 7 * 24 * 3600;

void
dt_define_gucs(void)
{
	DefineCustomStringVariable("digitaltwin.databases",
							   "Databases whose events the digitaltwin workers may process; empty for all.",
							   "A comma-separated list of database names.  In a database not listed, CREATE EXTENSION digitaltwin "
							   "and inserts into its queue fail; workers serving a database removed from the list stop at reload.",
							   &dt_databases,
							   "",
							   PGC_SIGHUP,
							   GUC_LIST_INPUT,
							   dt_check_databases, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.workers",
							"Number of digitaltwin background workers of each database.",
							"Twins are partitioned among a database's workers by a hash of the twin id; 0 serves no database.",
							&dt_workers,
							2, 0, DT_MAX_WORKERS,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.max_databases",
							"Most databases digitaltwin serves at once.",
							"Each database that has the extension takes one entry of shared memory, served or not; "
							"the background workers it needs (digitaltwin.workers each) count against max_worker_processes.",
							&dt_max_databases,
							8, 1, 256,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.max_memory",
							"Shared memory available for twins.",
							"When it is full, the events that need more memory are dead-lettered; the others go on.",
							&dt_max_memory_mb,
							256, 1, INT_MAX / 2,
							PGC_POSTMASTER,
							GUC_UNIT_MB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.max_memory_per_database",
							"Shared memory one database's twins may use; 0 means up to digitaltwin.max_memory.",
							"A database past it has the events that need more memory dead-lettered, as when digitaltwin.max_memory is full, "
							"while the other databases go on.",
							&dt_max_memory_per_database_mb,
							0, 0, INT_MAX / 2,
							PGC_SIGHUP,
							GUC_UNIT_MB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.batch_size",
							"Maximum number of events a worker processes in one transaction.",
							"Under load, larger batches write each changed twin once for more events; a batch takes only what is queued, so this bounds latency only when a backlog builds.",
							&dt_batch_size,
							50000, 1, 100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.poll_interval",
							"Time between polls of the event queue when no commit wakes the workers.",
							NULL,
							&dt_poll_interval_ms,
							1000, 1, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.batch_delay",
							"Shortest time between two small batches of one worker; 0 disables.",
							"While a worker's recent batches held fewer than 32 events on average, its next batch waits "
							"until this long after the last one ended, so that a stream of one-event transactions is "
							"processed in fewer, larger batches.  Events that arrive after a pause are not delayed.",
							&dt_batch_delay_ms,
							0, 0, 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.model_timeout",
							"Longest time a model function may run for one event; 0 disables.",
							"An event whose model runs longer is dead-lettered; a model that goes on a second after the cancel stops its worker, which restarts and dead-letters the event.",
							&dt_model_timeout_ms,
							5000, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.max_payload_size",
							"Largest event payload accepted.",
							NULL,
							&dt_max_payload_kb,
							1024, 1, 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.max_state_size",
							"Largest twin state a model may return.",
							"An event whose model returns a larger state is dead-lettered.",
							&dt_max_state_kb,
							1024, 1, 1024 * 1024,
							PGC_SIGHUP,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.queue_rotation",
							"Time after which new events go to the next partition of the queue.",
							"Consumed partitions are truncated; a shorter time keeps the queue smaller, and the workers read fewer of its pages for each batch, at the cost of more truncations.",
							&dt_queue_rotation_ms,
							1000, 100, 24 * 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.log_partition_interval",
							"Time span of each partition of the event log and of the state history.",
							"Partitions older than the longest keep of set_event_log() or set_history() are dropped whole: a shorter span frees space sooner, at the cost of more partitions.",
							&dt_log_partition_s,
							3600, 1, 31 * 24 * 3600,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.alert_retention",
							"Age after which alerts are deleted; 0 keeps them forever.",
							NULL,
							&dt_alert_retention_s,
							7 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.dead_letter_retention",
							"Age after which dead letters are deleted; 0 keeps them forever.",
							NULL,
							&dt_dead_letter_retention_s,
							30 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.max_twins_per_model",
							"Most twins one model may have; 0 means no limit.",
							"An event that would create a twin beyond it is dead-lettered.",
							&dt_max_twins_per_model,
							0, 0, INT_MAX,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("digitaltwin.allow_superuser_models",
							 "Whether models owned by a superuser may be created and run.",
							 "A model runs its functions as its owner in a background worker; a superuser owner would run them, and anything they call, with superuser rights.",
							 &dt_allow_superuser_models,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("digitaltwin.live_view_huge_pages",
							 "Whether a large copy of the live twins is advised to use transparent huge pages.",
							 "A scan of digitaltwin.twins copies what it reads into memory mapped for it; from 4 MB up, with this on, "
							 "that memory is advised MADV_HUGEPAGE: one page fault per 2 MB instead of per 4 kB. "
							 "Where the kernel compacts memory synchronously for such advice and memory is fragmented, turning it off avoids those stalls.",
							 &dt_live_view_huge_pages,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.max_message_depth",
							"Longest chain of events that models send to models.",
							"An event sent by an application has depth 0, one sent by a model the depth of the event it processes plus one; "
							"a model that sends an event beyond this depth has its own event dead-lettered.",
							&dt_max_message_depth,
							16, 1, 1000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("digitaltwin.outbox_retention",
							"Age after which taken outbox rows are deleted; 0 keeps them forever.",
							"Counted from taken_at; rows no gateway has taken are never deleted.",
							&dt_outbox_retention_s,
							7 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("digitaltwin");
}
