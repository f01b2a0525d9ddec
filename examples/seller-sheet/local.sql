/*
 * The local side of the "Spreadsheet → Postgres" example: your own tables
 * (here the schema `sales` of Syncline's database), filled from a sheet of
 * sellers and a sheet of sales regions. In a real project these come from
 * your migrations; Syncline never creates or alters them, it introspects
 * them and casts every cell of the sheet to the column's type.
 *
 * The types and the foreign key are the first line of validation: a cell
 * its column's type rejects ("ten" in a numeric column) and a seller whose
 * region is not in the regions sheet are quarantined in sync.run_error with
 * the reason; the other lines load. The not-null and check constraints hold
 * too, but a line breaking one of them currently fails the whole run of its
 * entity (nothing is written; see the README).
 *
 * Safe to run again and again: only `if not exists`, never a drop.
 */

create schema if not exists sales;
comment on schema sales is 'Sellers and sales regions, kept in step with the sellers spreadsheet by Syncline.';

create table if not exists sales.regions (
  region_code text primary key,
  name text not null,
  country text check (country ~ '^[A-Z]{2}$'),
  manager_email text,
  updated_at timestamptz
);
comment on table sales.regions is 'Sales regions (synced from the "Regions" tab of the sellers sheet; mirror: a region removed from the sheet goes once no seller points at it).';
comment on column sales.regions.region_code is 'Short code sellers refer to, e.g. NORTH (sheet header "Code").';
comment on column sales.regions.name is 'Display name (sheet header "Region").';
comment on column sales.regions.country is 'ISO 3166-1 alpha-2 country code (sheet header "Country").';
comment on column sales.regions.manager_email is 'Who runs the region (sheet header "Manager E-mail").';
comment on column sales.regions.updated_at is 'When someone last edited the row in the sheet, in the sheet''s time zone (sheet header "Last Updated").';

create table if not exists sales.sellers (
  seller_number text primary key check (seller_number ~ '^S-[0-9]{4}$'),
  name text not null,
  email text,
  commission_pct numeric(5, 2) check (commission_pct between 0 and 100),
  region text references sales.regions (region_code),
  joined_on date,
  active boolean,
  updated_at timestamptz
);
comment on table sales.sellers is 'Sellers (synced from the "Sellers" tab of the sellers sheet; mirror: a row removed from the sheet is deleted here).';
comment on column sales.sellers.seller_number is 'S- and four digits, e.g. S-0042 (sheet header "Seller Number").';
comment on column sales.sellers.name is 'Full name as written in the sheet (header "Name").';
comment on column sales.sellers.email is 'Work e-mail address (sheet header "E-mail").';
comment on column sales.sellers.commission_pct is 'Commission in percent of net sales, 0–100 with two decimals (sheet header "Commission %"; the cells must be plain numbers, not percent-formatted).';
comment on column sales.sellers.region is 'The seller''s region (sheet header "Region"); must be a code of the regions sheet, else the line is quarantined.';
comment on column sales.sellers.joined_on is 'First day with the company (sheet header "Joined On", written 2024-03-18).';
comment on column sales.sellers.active is 'Whether the seller currently sells (sheet header "Active": a checkbox, exported as TRUE or FALSE).';
comment on column sales.sellers.updated_at is 'When someone last edited the row in the sheet, in the sheet''s time zone (sheet header "Last Updated").';
create index if not exists sellers_region_idx on sales.sellers (region);
comment on index sales.sellers_region_idx is 'Lets the regions merge check cheaply whether a region is still referenced before deleting it.';
