/*-------------------------------------------------------------------------
 *
 * digitaltwin.c
 *	  Module load: parameters, shared memory hooks, the launcher.
 *
 * digitaltwin must be in shared_preload_libraries: its launcher and its twin
 * hashes live from postmaster start.  Loaded any other way, the SQL functions
 * refuse to run (dt_require_preload) rather than half-work.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"

#include "dt_internal.h"

PG_MODULE_MAGIC;

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

	dt_register_launcher();
	dt_preloaded = true;
}
