/*-------------------------------------------------------------------------
 *
 * messages.c
 *	  digitaltwin.send(): events for twins, and messages between twins.
 *
 * Outside a model, send() inserts the event as its caller, with the
 * caller's privileges, through one kept plan.
 *
 * Inside a model, send() is a message, and costs what an alert costs: it is
 * checked at once, given its id, and recorded in worker-local memory; the
 * worker inserts all messages of a batch with one statement in the batch's
 * transaction (dt_messages_flush), so a message exists exactly when the
 * event that sent it was consumed.  Inserting each message when the model
 * sent it cost a parse, plan and executor start of an INSERT per message
 * (docs/performance.md, "Timers, messages and the outbox").
 *
 * What the INSERT of each message used to check is checked when the model
 * calls send(), so that a bad message fails its sending event with the same
 * error (SQLSTATE and message) as before, and never the batch:
 *	  - the sender's privileges: INSERT on digitaltwin.events (the table, or
 *		the columns send() writes) and SELECT on its id (RETURNING id), as
 *		the executor checks them for the model's owner;
 *	  - the chain's depth (dt_next_event_depth, the default of events.depth);
 *	  - the queue's CHECK constraint (dt_event_check).
 * Only the receiving model can change between the call and the flush: a
 * model dropped in between makes the CHECK fail the flush, and the batch
 * is retried, when its sender fails at send() instead.
 *
 * The columns the defaults used to fill are set from the current event:
 * depth + 1, the sending model and twin, and the sender's event time when
 * send() is given none.  The id comes from events_id_seq when send() is
 * called, so ids ascend in the order the messages were sent, and the flush
 * keeps that order: a twin receives one sender's messages in sending order.
 *
 * A message is undone with the run of events it belongs to when one of them
 * fails (dt_messages_undo_to, as alerts are), and with a subtransaction of
 * the model that rolls back (an exception block that catches an error),
 * as the row it used to be would have been.  Staged messages of a batch are
 * bounded by DT_FLUSH_BYTES; beyond it, send() inserts the message at once,
 * as it used to: a batch's memory stays bounded and nothing is refused.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_send);

/* the columns of digitaltwin.events that send() writes (INSERT privilege) */
static const char *const send_columns[] = {"model", "twin_id", "payload", "event_time"};

typedef struct DtStagedMessage
{
	int64		id;				/* from events_id_seq, at send() */
	text	   *model;			/* the receiver: model and twin */
	text	   *twin_id;
	Jsonb	   *payload;		/* copies in the batch's memory */
	TimestampTz event_time;
	int32		depth;
	DtModel    *sender_model;	/* the current event's model and event */
	DtEvent    *sender;
} DtStagedMessage;

static MemoryContext messages_cxt = NULL;	/* NULL: no batch staging */
static DtStagedMessage *messages = NULL;
static int	nmessages = 0;
static int	messages_size = 0;
static Size staged_bytes = 0;

/* looked up once per batch */
static Oid	events_relid = InvalidOid;
static Oid	events_seq = InvalidOid;
static Oid	checked_user = InvalidOid;	/* may send: privileges checked */

static SPIPlanPtr send_plan = NULL; /* the caller's INSERT (any backend) */
static SPIPlanPtr flush_plan = NULL;	/* the worker's */

/* The batch's memory is going away (end of batch, or a failed batch). */
static void
dt_messages_reset_callback(void *arg)
{
	messages_cxt = NULL;
	messages = NULL;
	nmessages = 0;
}

void
dt_messages_begin(MemoryContext cxt)
{
	MemoryContextCallback *cb;

	messages_size = 64;
	messages = MemoryContextAlloc(cxt, sizeof(DtStagedMessage) * messages_size);
	nmessages = 0;
	staged_bytes = 0;
	cb = MemoryContextAlloc(cxt, sizeof(MemoryContextCallback));
	cb->func = dt_messages_reset_callback;
	cb->arg = NULL;
	MemoryContextRegisterResetCallback(cxt, cb);
	/* catalogs may have changed between batches */
	events_relid = InvalidOid;
	events_seq = InvalidOid;
	checked_user = InvalidOid;
	messages_cxt = cxt;
}

int
dt_messages_mark(void)
{
	return nmessages;
}

void
dt_messages_undo_to(int mark)
{
	if (nmessages > mark)
		nmessages = mark;
}

/*
 * What the executor checks before the INSERT ... RETURNING id that send()
 * used to run as the model's owner, with the same error.
 */
static void
dt_messages_check_privileges(Oid user)
{
	int			i;

	if (user == checked_user)
		return;
	if (pg_class_aclcheck(events_relid, user, ACL_INSERT) != ACLCHECK_OK)
	{
		for (i = 0; i < lengthof(send_columns); i++)
		{
			AttrNumber	attnum = get_attnum(events_relid, send_columns[i]);

			if (attnum == InvalidAttrNumber ||
				pg_attribute_aclcheck(events_relid, attnum, user, ACL_INSERT) != ACLCHECK_OK)
				aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLE, "events");
		}
	}
	if (pg_class_aclcheck(events_relid, user, ACL_SELECT) != ACLCHECK_OK &&
		pg_attribute_aclcheck(events_relid, get_attnum(events_relid, "id"),
							  user, ACL_SELECT) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLE, "events");
	checked_user = user;
}

/* A copy of a text in the batch's memory, with a 4-byte header. */
static text *
dt_messages_copy_text(text *t)
{
	int			len = VARSIZE_ANY_EXHDR(t);
	text	   *copy = MemoryContextAlloc(messages_cxt, VARHDRSZ + len);

	SET_VARSIZE(copy, VARHDRSZ + len);
	memcpy(VARDATA(copy), VARDATA_ANY(t), len);
	return copy;
}

/*
 * Stage a message from the current model call; returns its id.  Every
 * check the INSERT would have made is made here (see the file header).
 */
static int64
dt_messages_stage(text *model_t, text *twin_id, Datum payload, bool payload_isnull,
				  bool time_isnull, TimestampTz event_time)
{
	char	   *model = model_t ? text_to_cstring(model_t) : NULL;
	DtStagedMessage *m;
	int32		depth;
	Jsonb	   *jb;

	if (!OidIsValid(events_relid))
	{
		events_relid = dt_extension_relid("events");
		events_seq = dt_extension_relid("events_id_seq");
	}
	/* in the order the INSERT made them: privileges, defaults, CHECK */
	dt_messages_check_privileges(GetUserId());
	depth = dt_next_event_depth();
	dt_event_check(model, twin_id, payload, payload_isnull);

	jb = DatumGetJsonbP(payload);
	if (nmessages == messages_size)
	{
		messages_size *= 2;
		messages = repalloc_huge(messages, sizeof(DtStagedMessage) * messages_size);
	}
	m = &messages[nmessages];
	/* a model sends its messages to few models: share the name */
	if (nmessages > 0 && VARSIZE(messages[nmessages - 1].model) - VARHDRSZ == strlen(model) &&
		memcmp(VARDATA(messages[nmessages - 1].model), model, strlen(model)) == 0)
		m->model = messages[nmessages - 1].model;
	else
		m->model = dt_messages_copy_text(model_t);
	m->twin_id = dt_messages_copy_text(twin_id);
	m->payload = MemoryContextAlloc(messages_cxt, VARSIZE(jb));
	memcpy(m->payload, jb, VARSIZE(jb));
	m->event_time = time_isnull ? dt_current_event->event->event_time : event_time;
	m->depth = depth;
	m->sender_model = dt_current_event->model;
	m->sender = dt_current_event->event;
	/* last: a sequence is not transactional, an id is not given back */
	m->id = nextval_internal(events_seq, false);
	nmessages++;
	staged_bytes += sizeof(DtStagedMessage) + VARSIZE(m->model) +
		VARSIZE(m->twin_id) + VARSIZE(m->payload);
	/* wait_idle: this batch may have sent messages */
	dt_messages_sent++;
	return m->id;
}

/*
 * Insert the event as the caller: the caller's privileges, the defaults
 * and the CHECK constraint apply.  search_path is pinned for the statement
 * (its defaults, constraint and trigger are the extension's own), in a nest
 * level that ends with it.
 */
static int64
dt_send_insert(Datum *args, bool *isnull)
{
	MemoryContext cxt = CurrentMemoryContext;
	char		nulls[4];
	int			level;
	volatile int ret = 0;
	int			i;
	bool		id_null;
	int64		id;

	for (i = 0; i < 4; i++)
		nulls[i] = isnull[i] ? 'n' : ' ';
	level = dt_pin_search_path();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (send_plan == NULL)
	{
		Oid			types[4] = {TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID};

		send_plan = dt_spi_prepare_kept("INSERT INTO digitaltwin.events "
										"(model, twin_id, payload, event_time) "
										"VALUES ($1, $2, $3, coalesce($4, digitaltwin._default_event_time())) "
										"RETURNING id",
										4, types);
	}

	/*
	 * No row count: with one, the executor would stop at the returned row
	 * without finishing the INSERT, whose AFTER STATEMENT trigger (the
	 * workers' wake-up at commit) would then never fire.
	 *
	 * An error comes out as the C function's own, without SPI's context
	 * line (the statement's text, an implementation detail).
	 */
	PG_TRY();
	{
		ret = SPI_execute_plan(send_plan, args, nulls, false, 0);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		if (edata->context != NULL &&
			strncmp(edata->context, "SQL statement \"", 15) == 0)
		{
			char	   *rest = strchr(edata->context, '\n');

			edata->context = rest ? pstrdup(rest + 1) : NULL;
		}
		ReThrowError(edata);
	}
	PG_END_TRY();
	if (ret != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									 1, &id_null));
	SPI_finish();
	AtEOXact_GUC(false, level);
	return id;
}

/*
 * digitaltwin.send(model, twin_id, payload, event_time DEFAULT NULL)
 * RETURNS bigint: the event's id.
 */
Datum
digitaltwin_send(PG_FUNCTION_ARGS)
{
	Datum		args[4];
	bool		isnull[4];
	int			i;

	for (i = 0; i < 4; i++)
	{
		isnull[i] = PG_ARGISNULL(i);
		args[i] = isnull[i] ? (Datum) 0 : PG_GETARG_DATUM(i);
	}

	/*
	 * A message is staged when the worker stages this batch's messages
	 * (not, say, in the worker's live-view conversions) and while the batch
	 * has room for it; otherwise it is inserted at once.
	 */
	if (dt_current_event != NULL && messages_cxt != NULL &&
		staged_bytes + (isnull[2] ? 0 : toast_raw_datum_size(args[2])) +
		(isnull[1] ? 0 : VARSIZE_ANY(DatumGetPointer(args[1]))) < DT_FLUSH_BYTES)
		PG_RETURN_INT64(dt_messages_stage(isnull[0] ? NULL : PG_GETARG_TEXT_PP(0),
										  isnull[1] ? NULL : PG_GETARG_TEXT_PP(1),
										  args[2], isnull[2],
										  isnull[3], isnull[3] ? 0 : PG_GETARG_TIMESTAMPTZ(3)));
	PG_RETURN_INT64(dt_send_insert(args, isnull));
}

/* ----------------------------------------------------------------
 * End of batch
 * ----------------------------------------------------------------
 */

/* Insert messages [start, end) with one statement. */
static void
dt_messages_insert(int start, int end)
{
	int			n = end - start;
	Datum	   *cols[8];
	Datum		args[8];
	Oid			elem_types[8] = {INT8OID, TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID,
	INT4OID, TEXTOID, TEXTOID};
	int			ret;
	int			i;

	if (flush_plan == NULL)
	{
		Oid			types[8] = {INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID,
		TIMESTAMPTZARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID};

		/*
		 * The worker's session: search_path pinned, owner of the tables.  The
		 * ids were taken at send(); enqueued_at and part take their defaults,
		 * the CHECK runs again, and the statement trigger wakes the workers
		 * at commit.
		 */
		flush_plan = dt_spi_prepare_kept("INSERT INTO digitaltwin.events "
										 "(id, model, twin_id, payload, event_time, depth, sender_model, sender_twin) "
										 "OVERRIDING SYSTEM VALUE "
										 "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
										 "pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), "
										 "pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8))",
										 8, types);
	}

	for (i = 0; i < 8; i++)
		cols[i] = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
	{
		DtStagedMessage *m = &messages[start + i];

		cols[0][i] = Int64GetDatum(m->id);
		cols[1][i] = PointerGetDatum(m->model);
		cols[2][i] = PointerGetDatum(m->twin_id);
		cols[3][i] = JsonbPGetDatum(m->payload);
		cols[4][i] = TimestampTzGetDatum(m->event_time);
		cols[5][i] = Int32GetDatum(m->depth);
		cols[6][i] = CStringGetTextDatum(m->sender_model->name);
		cols[7][i] = CStringGetTextDatum(m->sender->twin_id);
	}
	for (i = 0; i < 8; i++)
	{
		int16		typlen;
		bool		typbyval;
		char		typalign;

		get_typlenbyvalalign(elem_types[i], &typlen, &typbyval, &typalign);
		args[i] = PointerGetDatum(construct_array(cols[i], n, elem_types[i],
												  typlen, typbyval, typalign));
	}

	ret = SPI_execute_plan(flush_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
	for (i = 0; i < 8; i++)
		pfree(DatumGetPointer(args[i]));
}

/*
 * Insert the batch's messages, in the order they were sent.  Runs inside
 * SPI in the batch's transaction, after the model calls.  Returns the
 * number of messages.  A statement takes at most DT_FLUSH_BYTES of
 * payloads, so that its arrays stay under the 1 GB a value can have.
 */
int
dt_messages_flush(void)
{
	int			start = 0;
	int			done = nmessages;
	Size		bytes = 0;
	int			i;

	Assert(messages_cxt != NULL);
	for (i = 0; i < nmessages; i++)
	{
		Size		size = VARSIZE(messages[i].payload) + VARSIZE(messages[i].twin_id);

		if (i > start && bytes + size > DT_FLUSH_BYTES)
		{
			dt_messages_insert(start, i);
			start = i;
			bytes = 0;
		}
		bytes += size;
	}
	if (nmessages > start)
		dt_messages_insert(start, nmessages);
	nmessages = 0;
	/* a send() from here on (none is expected) inserts at once */
	messages_cxt = NULL;
	return done;
}

void
dt_messages_forget_plans(void)
{
	if (flush_plan)
		SPI_freeplan(flush_plan);
	flush_plan = NULL;
}
