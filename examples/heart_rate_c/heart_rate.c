/*-------------------------------------------------------------------------
 *
 * heart_rate.c
 *	  The heart-rate monitor digital twin, as a C model.
 *
 * Same logic as examples/heart_rate.sql, but the state is a fixed binary
 * struct kept in a bytea: reading it costs a pointer cast and writing it a
 * memcpy, where the plpgsql model parses and rebuilds jsonb at each event.
 * The live view shows such a state as a hex string; heart_rate_c_summary()
 * decodes it.
 *
 * It also shows the timers of the C API: a reading carrying
 * "silence_after": s arms the twin's "silence" timer s seconds ahead (each
 * such reading re-arms it, 0 cancels it); if it falls due, no reading came
 * in time, and the model raises a warning.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "digitaltwin.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(heart_rate_c_init);
PG_FUNCTION_INFO_V1(heart_rate_c_process);
PG_FUNCTION_INFO_V1(heart_rate_c_summary);

/* when the patient has no record */
#define DEFAULT_LIMIT 180.0

typedef struct HeartRateState
{
	double		limit;
	int64		readings;
	double		sum;
	double		max;
	double		last;
	int32		over_streak;
} HeartRateState;

/*
 * The limit from the medical record: the cardiologist's when set, else
 * 220 - age, 10% lower with a known arrhythmia.  The query is prepared once
 * per worker and kept.
 */
static double
patient_limit(text *twin_id)
{
	static SPIPlanPtr plan = NULL;
	Datum		arg = PointerGetDatum(twin_id);
	double		limit = DEFAULT_LIMIT;
	int			ret;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (plan == NULL)
	{
		Oid			argtype = TEXTOID;

		plan = SPI_prepare("SELECT coalesce(max_heart_rate, round((220 - age) * "
						   "  CASE WHEN 'arrhythmia' = ANY (conditions) THEN 0.9 ELSE 1.0 END))::float8 "
						   "FROM patients WHERE patient_id = $1",
						   1, &argtype);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}
	ret = SPI_execute_plan(plan, &arg, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			limit = DatumGetFloat8(d);
	}
	SPI_finish();
	return limit;
}

Datum
heart_rate_c_init(PG_FUNCTION_ARGS)
{
	HeartRateState state;

	memset(&state, 0, sizeof(state));
	state.limit = patient_limit(PG_GETARG_TEXT_PP(0));
	PG_RETURN_BYTEA_P(DT_STATE_MAKE(&state, sizeof(state)));
}

Datum
heart_rate_c_process(PG_FUNCTION_ARGS)
{
	text	   *twin_id = PG_GETARG_TEXT_PP(0);
	HeartRateState *state = DT_STATE_GET(PG_GETARG_BYTEA_PP(1), HeartRateState);
	Jsonb	   *event = PG_GETARG_JSONB_P(2);
	double		bpm;
	double		silence_s;

	/* the silence timer armed below fell due: no reading since */
	if (digitaltwin_current_timer() != NULL)
	{
		digitaltwin_alert("warning",
						  psprintf("%s: no reading since %.0f bpm",
								   text_to_cstring(twin_id), state->last),
						  NULL);
		PG_RETURN_BYTEA_P(DT_STATE_MAKE(state, sizeof(HeartRateState)));
	}

	if (!digitaltwin_jsonb_get_float8(event, "bpm", &bpm) || bpm <= 0 || bpm > 300)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("implausible heart rate for %s", text_to_cstring(twin_id)),
				 errdetail("A reading needs a \"bpm\" number between 1 and 300.")));

	if (bpm > state->limit)
	{
		state->over_streak++;
		if (digitaltwin_in_model())
		{
			char	   *who = text_to_cstring(twin_id);

			digitaltwin_alert("critical",
							  psprintf("%s: heart rate %.0f above limit %.0f",
									   who, bpm, state->limit),
							  NULL);
			if (state->over_streak == 3)
				digitaltwin_alert("sustained",
								  psprintf("%s: three readings in a row above %.0f",
										   who, state->limit),
								  NULL);
		}
	}
	else
		state->over_streak = 0;

	/*
	 * A reading may ask to be told when the next one is late: each such
	 * reading re-arms the twin's "silence" timer, a reading with 0 cancels it.
	 */
	if (digitaltwin_in_model() &&
		digitaltwin_jsonb_get_float8(event, "silence_after", &silence_s))
	{
		if (silence_s > 0)
		{
			Interval	after;

			memset(&after, 0, sizeof(after));
			after.time = (TimeOffset) (silence_s * USECS_PER_SEC);
			digitaltwin_set_timer("silence", &after, NULL, NULL);
		}
		else
			(void) digitaltwin_cancel_timer("silence");
	}

	state->readings++;
	state->sum += bpm;
	state->max = Max(state->max, bpm);
	state->last = bpm;
	PG_RETURN_BYTEA_P(DT_STATE_MAKE(state, sizeof(HeartRateState)));
}

Datum
heart_rate_c_summary(PG_FUNCTION_ARGS)
{
	HeartRateState *state = DT_STATE_GET(PG_GETARG_BYTEA_PP(0), HeartRateState);
	TupleDesc	desc;
	Datum		values[6];
	bool		nulls[6] = {false, false, false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = Float8GetDatum(state->limit);
	values[1] = Int64GetDatum(state->readings);
	values[2] = Float8GetDatum(state->readings > 0 ? state->sum / state->readings : 0);
	nulls[2] = (state->readings == 0);
	values[3] = Float8GetDatum(state->max);
	values[4] = Float8GetDatum(state->last);
	values[5] = Int32GetDatum(state->over_streak);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
