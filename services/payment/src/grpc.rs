//! The gRPC face of the payment service: validate, run the operation idempotently, convert.

use sea_orm::DatabaseTransaction;
use tonic::{Request, Response, Status};
use uuid::Uuid;
use zentra_proto::{
    common::v1::{Money, PageResponse},
    payment::v1 as pb,
};
use zentra_runtime::{
    group_commit::Work,
    idempotency::IdempotentRequest,
    paging::Page,
    status::{Violations, check_idempotency_key, check_text, parse_uuid},
    validate::check_currency,
};

use crate::{
    convert,
    error::PaymentError,
    payments::{Authorize, Payments},
    store::{self, Payment},
};

/// Largest amount one payment may carry, in minor units.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// Implements `zentra.payment.v1.PaymentService`.
pub struct PaymentApi {
    payments: Payments,
}

impl PaymentApi {
    /// The API over `payments`.
    pub fn new(payments: Payments) -> Self {
        Self { payments }
    }

    /// The payment database.
    pub fn db(&self) -> &sea_orm::DatabaseConnection {
        self.payments.db()
    }

    /// Runs `change` (of the payment `id`) idempotently under the request's key in the payments'
    /// group commit, and answers with the payment after it, as `respond` wraps it.
    async fn change<Q, R, F>(
        &self,
        scope: &'static str,
        request: &Q,
        change: F,
        (respond, payment_of): PaymentResponse<R>,
    ) -> Result<Response<R>, Status>
    where
        Q: IdempotentRequest,
        R: prost::Message + Default + 'static,
        F: for<'t> FnOnce(Payments, &'t DatabaseTransaction) -> Work<'t, Payment, PaymentError>
            + Send
            + 'static,
    {
        let payments = self.payments.clone();
        let done = self
            .payments
            .group()
            .idempotent(scope, request, move |tx| {
                Box::pin(async move {
                    let payment = change(payments, tx).await?;
                    Ok::<_, PaymentError>(respond(Some(convert::payment(&payment))))
                })
            })
            .await?;
        if done.emitted {
            self.payments.committed();
        }
        if let Some(payment) = payment_of(&done.value) {
            tracing::info!(payment_id = %payment.payment_id, status = payment.status().as_str_name(), scope, "payment changed");
        }
        Ok(Response::new(done.value))
    }
}

/// How a response carries the payment: built around it, and read back for the log.
type PaymentResponse<R> = (fn(Option<pb::Payment>) -> R, fn(&R) -> Option<&pb::Payment>);

/// Validates a required amount: supported currency, 1..=MAX_AMOUNT minor units.
fn check_amount(
    field: &str,
    money: Option<&Money>,
    violations: &mut Violations,
) -> Option<(String, i64)> {
    let Some(money) = money else {
        violations.add(field, "is required");
        return None;
    };
    let currency_ok = check_currency(
        &format!("{field}.currency_code"),
        &money.currency_code,
        violations,
    );
    if !(1..=MAX_AMOUNT).contains(&money.amount_minor) {
        violations.add(
            format!("{field}.amount_minor"),
            format!("must be 1..={MAX_AMOUNT}"),
        );
        return None;
    }
    currency_ok.then(|| (money.currency_code.clone(), money.amount_minor))
}

fn parse_id(field: &str, value: &str, key: &str, violations: &mut Violations) -> Option<Uuid> {
    check_idempotency_key(key, violations);
    parse_uuid(field, value, violations)
}

#[tonic::async_trait]
impl pb::payment_service_server::PaymentService for PaymentApi {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let order_id = parse_id(
            "order_id",
            &request.order_id,
            &request.idempotency_key,
            &mut violations,
        );
        let amount = check_amount("amount", request.amount.as_ref(), &mut violations);
        check_text(
            "payment_method_token",
            &request.payment_method_token,
            128,
            &mut violations,
        );
        let (Some(order_id), Some((currency, amount_minor)), true) =
            (order_id, amount, violations.is_empty())
        else {
            return Err(violations.into_status());
        };
        let authorize = Authorize {
            order_id,
            currency,
            amount_minor,
            token: request.payment_method_token.clone(),
            idempotency_key: request.idempotency_key.clone(),
        };
        let outcome = self.payments.ask_processor(&authorize).await?;
        self.change(
            "Authorize",
            &request,
            move |payments, tx| {
                Box::pin(async move { payments.authorize(tx, &authorize, &outcome).await })
            },
            (
                |payment| pb::AuthorizeResponse { payment },
                |response| response.payment.as_ref(),
            ),
        )
        .await
    }

    async fn capture(
        &self,
        request: Request<pb::CaptureRequest>,
    ) -> Result<Response<pb::CaptureResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let id = parse_id(
            "payment_id",
            &request.payment_id,
            &request.idempotency_key,
            &mut violations,
        );
        // Unset amount captures the full authorization.
        let amount = request
            .amount
            .as_ref()
            .map(|money| check_amount("amount", Some(money), &mut violations));
        let (Some(id), true) = (id, violations.is_empty()) else {
            return Err(violations.into_status());
        };
        let amount = amount.flatten();
        let key = request.idempotency_key.clone();
        self.change(
            "Capture",
            &request,
            move |payments, tx| {
                Box::pin(async move { payments.capture(tx, id, amount, &key).await })
            },
            (
                |payment| pb::CaptureResponse { payment },
                |response| response.payment.as_ref(),
            ),
        )
        .await
    }

    async fn void(
        &self,
        request: Request<pb::VoidRequest>,
    ) -> Result<Response<pb::VoidResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let id = parse_id(
            "payment_id",
            &request.payment_id,
            &request.idempotency_key,
            &mut violations,
        );
        check_text("reason", &request.reason, 500, &mut violations);
        let (Some(id), true) = (id, violations.is_empty()) else {
            return Err(violations.into_status());
        };
        let reason = request.reason.trim().to_owned();
        let key = request.idempotency_key.clone();
        self.change(
            "Void",
            &request,
            move |payments, tx| Box::pin(async move { payments.void(tx, id, &reason, &key).await }),
            (
                |payment| pb::VoidResponse { payment },
                |response| response.payment.as_ref(),
            ),
        )
        .await
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let id = parse_id(
            "payment_id",
            &request.payment_id,
            &request.idempotency_key,
            &mut violations,
        );
        let amount = check_amount("amount", request.amount.as_ref(), &mut violations);
        check_text("reason", &request.reason, 500, &mut violations);
        let (Some(id), Some(amount), true) = (id, amount, violations.is_empty()) else {
            return Err(violations.into_status());
        };
        let reason = request.reason.trim().to_owned();
        let key = request.idempotency_key.clone();
        self.change(
            "Refund",
            &request,
            move |payments, tx| {
                Box::pin(async move { payments.refund(tx, id, amount, &reason, &key).await })
            },
            (
                |payment| pb::RefundResponse { payment },
                |response| response.payment.as_ref(),
            ),
        )
        .await
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let mut violations = Violations::new();
        let Some(id) = parse_uuid("payment_id", &request.get_ref().payment_id, &mut violations)
        else {
            return Err(violations.into_status());
        };
        let payment = store::payment(self.payments.db(), id).await?;
        Ok(Response::new(pb::GetPaymentResponse {
            payment: Some(convert::payment(&payment)),
        }))
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page = Page::parse(request.page.as_ref(), &mut violations);
        let order_id = (!request.order_id.is_empty())
            .then(|| parse_uuid("order_id", &request.order_id, &mut violations))
            .flatten();
        let status = match pb::PaymentStatus::try_from(request.status) {
            Ok(pb::PaymentStatus::Unspecified) => None,
            Ok(status) => match convert::status_text(status) {
                Some(text) => Some(text),
                None => {
                    violations.add("status", "is never stored");
                    None
                }
            },
            Err(_) => {
                violations.add("status", "is not a PaymentStatus");
                None
            }
        };
        let after = page.uuid_cursor(&mut violations);
        violations.into_result()?;
        let mut payments = store::list(self.payments.db(), after, order_id, status, page.size + 1)
            .await
            .map_err(PaymentError::from)?;
        let next_page_token = page.finish(&mut payments, |p| p.id.to_string());
        Ok(Response::new(pb::ListPaymentsResponse {
            payments: payments.iter().map(convert::payment).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn get_payment_ledger(
        &self,
        request: Request<pb::GetPaymentLedgerRequest>,
    ) -> Result<Response<pb::GetPaymentLedgerResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page = Page::parse(request.page.as_ref(), &mut violations);
        let order_id = (!request.order_id.is_empty())
            .then(|| parse_uuid("order_id", &request.order_id, &mut violations))
            .flatten();
        let payment_id = (!request.payment_id.is_empty())
            .then(|| parse_uuid("payment_id", &request.payment_id, &mut violations))
            .flatten();
        if request.order_id.is_empty() && request.payment_id.is_empty() {
            violations.add("order_id", "order_id or payment_id is required");
        }
        let after = page.uuid_cursor(&mut violations);
        violations.into_result()?;
        let mut entries = store::ledger(
            self.payments.db(),
            after,
            order_id,
            payment_id,
            page.size + 1,
        )
        .await
        .map_err(PaymentError::from)?;
        let next_page_token = page.finish(&mut entries, |e| e.id.to_string());
        Ok(Response::new(pb::GetPaymentLedgerResponse {
            entries: entries.iter().map(convert::ledger_entry).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }
}
