/*-------------------------------------------------------------------------
 *
 * digitaltwin.c
 *	  Module load: parameters, shared memory hooks, background workers.
 *
 * digitaltwin must be in shared_preload_libraries: its workers and its twin
 * hash live from postmaster start.  Loaded any other way, the SQL functions
 * refuse to run (dt_require_preload) rather than half-work.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/guc.h"

#include "dt_internal.h"

PG_MODULE_MAGIC;

bool		dt_preloaded = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

static void
dt_shmem_request_hook(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	dt_shmem_request();
}

static void
dt_shmem_startup_hook(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	dt_shmem_startup();
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;

	dt_define_gucs();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = dt_shmem_request_hook;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = dt_shmem_startup_hook;

	/* DROP ROLE of a model's owner, REASSIGN OWNED (protect.c) */
	dt_install_utility_hook();

	dt_register_workers();
	dt_preloaded = true;
}

void
dt_require_preload(void)
{
	if (!dt_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("digitaltwin must be loaded via shared_preload_libraries"),
				 errhint("Add 'digitaltwin' to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * Functions a model must not call: waiting for the workers from inside a
 * worker would wait for itself, and registering or dropping models would
 * change the registry under the batch that is using it.
 */
void
dt_forbid_in_model(const char *function)
{
	if (dt_current_event != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s cannot be called from a model function", function),
				 errdetail("Model functions run inside the background workers' batches.")));
}

/*
 * Prepare a statement the workers run at every batch, and keep it for the
 * life of the process (until the extension is re-created).
 */
SPIPlanPtr
dt_spi_prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * Open a GUC nest level with search_path = pg_catalog, pg_temp (pg_temp
 * last: never searched first for relations and types, and never for
 * functions and operators).  The caller ends it with
 * AtEOXact_GUC(false, level); aborting the (sub)transaction also does.
 */
int
dt_pin_search_path(void)
{
	int			level = NewGUCNestLevel();

	(void) set_config_option("search_path", DT_TRUSTED_SEARCH_PATH,
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return level;
}
