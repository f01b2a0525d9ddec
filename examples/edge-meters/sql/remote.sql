/*
 * The cloud side of the "Edge ⇄ cloud" example: the central database every
 * gateway pushes its readings to and reads its configuration from (schema
 * public).
 *
 * readings is keyed by its natural key (tenant, meter, register, time): a
 * batch a gateway sends twice (it died between the cloud's commit and its
 * own delete) inserts nothing the second time. The configuration tables are
 * the cloud's to change; gateways only read them.
 *
 * Applied by `syncline edge setup`. Safe to run again and again: only
 * `if not exists`, never a drop.
 */

create table if not exists tenants (
  tenant_id text primary key,
  name text not null,
  timezone text not null default 'UTC',
  is_active boolean not null default true,
  updated_at timestamptz not null default now()
);
comment on table tenants is 'Tenants (utilities, landlords) whose gateways report here.';

create table if not exists meters (
  tenant_id text not null references tenants,
  meter_id bigint not null,
  serial_no text not null,
  model text not null,
  location text,
  is_active boolean not null default true,
  updated_at timestamptz not null default now(),
  primary key (tenant_id, meter_id)
);
comment on table meters is 'Meters by tenant; each gateway pulls its tenant''s.';

create table if not exists registers (
  tenant_id text not null references tenants,
  register_id integer not null,
  obis_code text not null,
  unit text not null,
  multiplier numeric(12, 6) not null default 1,
  updated_at timestamptz not null default now(),
  primary key (tenant_id, register_id)
);
comment on table registers is 'Register definitions (OBIS codes) by tenant.';

create table if not exists device_register (
  tenant_id text not null,
  meter_id bigint not null,
  register_id integer not null,
  channel smallint not null,
  updated_at timestamptz not null default now(),
  primary key (tenant_id, meter_id, register_id),
  foreign key (tenant_id, meter_id) references meters on delete cascade,
  foreign key (tenant_id, register_id) references registers on delete cascade
);
comment on table device_register is 'Which registers each meter exposes, on which channel.';

-- No foreign key to meters: readings keep arriving for a meter the cloud has
-- retired, and a rejected reading would block its gateway's queue.
create table if not exists readings (
  tenant_id text not null,
  meter_id bigint not null,
  register_id integer not null,
  recorded_at timestamptz not null,
  value numeric(14, 3) not null,
  quality smallint not null default 0,
  received_at timestamptz not null default now(),
  primary key (tenant_id, meter_id, register_id, recorded_at)
);
comment on table readings is 'Every reading of every gateway, exactly once: the primary key is the reading''s natural key, so a re-sent batch is a no-op (INSERT … ON CONFLICT DO NOTHING).';
comment on column readings.received_at is 'When the cloud committed the reading (cloud only; gateways do not send it).';
create index if not exists readings_tenant_time_idx on readings (tenant_id, recorded_at);
comment on index readings_tenant_time_idx is 'Reports over a tenant''s readings by time.';
